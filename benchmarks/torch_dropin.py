"""A PyTorch training step with fastrnn.torch.LSTM/GRU/RNN against torch.nn's, same run.

    python benchmarks/torch_dropin.py [--out benchmarks/results/torch-dropin.json]
                                      [--cells LSTM,GRU,RNN]

Grid of the CPU-backend issue: H {128, 512} x B {1, 32} x T {32, 256}, float32, both with
torch.set_num_threads equal to fastrnn's. A step is forward, loss = <out, g>, backward.

Then the same step for an LSTM with a projection (proj_size P; input size H/2):
(H, P) {(512, 128), (1024, 256)} x B {1, 32} x T {32, 256}.

Then step-by-step decoding (generation's loop): a 2-layer LSTM called on one token at a
time under torch.no_grad, carrying hx, for torch.nn.LSTM, fastrnn.torch.LSTM, and
fastrnn.torch.LSTM inside fastrnn.frozen_weights() (weights compared once, not per call).
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import warnings

import torch

import fastrnn
import fastrnn.torch as ft
from fastrnn import bench, report
from fastrnn.threads import get_num_threads


# cell name -> (torch.nn class, fastrnn.torch class); RNN is torch's default, tanh
CELLS = {"LSTM": (torch.nn.LSTM, ft.LSTM), "GRU": (torch.nn.GRU, ft.GRU), "RNN": (torch.nn.RNN, ft.RNN)}


def step_runner(cls, H, B, T, state):
    m = cls(H, H)
    m.load_state_dict(state)
    x = torch.randn(T, B, H, requires_grad=True)
    g = torch.randn(T, B, H)

    def run():
        out, _ = m(x)
        out.backward(g)
    return run


def tokens_per_s(runs, tokens):
    """Tokens a second of each of `runs` (median of its timed calls), the runs taking turns
    call by call (bench.take_turns) so a shared machine's drift hits them alike; short
    calls get more rounds."""
    times = bench.take_turns(runs, repeats=41, max_seconds=3.0, warmup=2)
    return [tokens / statistics.median(ts) for ts in times]


PROJ_SIZES = ((512, 128), (1024, 256))


def proj_rows():
    """Training steps of LSTM(H // 2, H, proj_size=P), torch.nn against fastrnn.torch."""
    # torch notes once that oneDNN has no projection and it runs its own implementation
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    rows = []
    for H, P in PROJ_SIZES:
        state = torch.nn.LSTM(H // 2, H, proj_size=P).state_dict()
        for B in (1, 32):
            for T in (32, 256):
                runs = []
                for cls in (torch.nn.LSTM, ft.LSTM):
                    m = cls(H // 2, H, proj_size=P)
                    m.load_state_dict(state)
                    x = torch.randn(T, B, H // 2, requires_grad=True)
                    g = torch.randn(T, B, P)

                    def run(m=m, x=x, g=g):
                        out, _ = m(x)
                        out.backward(g)
                    runs.append(run)
                t, f = tokens_per_s(runs, T * B)
                rows.append(dict(hidden=H, proj_size=P, batch=B, seq_len=T, torch_tokens_per_s=t,
                                 fastrnn_tokens_per_s=f, ratio=f / t))
    return rows


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


DECODE_STEPS = 64


def decode_runner(cls, H, state, frozen):
    """DECODE_STEPS one-token calls of a 2-layer LSTM (B = 1), hx carried."""
    m = cls(H, H, num_layers=2)
    m.load_state_dict(state)
    xs = torch.randn(DECODE_STEPS, 1, 1, H)

    def run():
        hx = None
        with torch.no_grad(), (fastrnn.frozen_weights() if frozen else contextlib.nullcontext()):
            for x in xs:
                _, hx = m(x, hx)
    return run


def decode_rows():
    variants = (("torch.nn.LSTM", torch.nn.LSTM, False), ("fastrnn.torch.LSTM", ft.LSTM, False),
                ("fastrnn.torch.LSTM, frozen_weights", ft.LSTM, True))
    rows = []
    for H in (256, 512):
        state = torch.nn.LSTM(H, H, num_layers=2).state_dict()
        res = dict(zip([v[0] for v in variants],
                       tokens_per_s([decode_runner(cls, H, state, frozen) for _, cls, frozen in variants],
                                    DECODE_STEPS)))
        rows.append(dict(hidden=H, layers=2, tokens_per_s=res))
    return rows


def parse_args(argv, out_name, cells):
    """(--out path, --cells list) of a torch comparison script; `cells` the names it knows.
    Also gives torch fastrnn's thread count."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", out_name))
    p.add_argument("--cells", default=",".join(cells), help="comma-separated, of " + ",".join(cells))
    args = p.parse_args(argv)
    chosen = args.cells.split(",")
    unknown = [c for c in chosen if c not in cells]
    if unknown:
        p.error(f"--cells: unknown {unknown}, expected some of {list(cells)}")
    torch.set_num_threads(get_num_threads())
    return args.out, chosen


def main(argv=None):
    out, cells = parse_args(argv, "torch-dropin.json", CELLS)
    rows = []
    for cell in cells:
        theirs, ours = CELLS[cell]
        for H in (128, 512):
            for B in (1, 32):
                for T in (32, 256):
                    state = theirs(H, H).state_dict()
                    t, f = tokens_per_s([step_runner(c, H, B, T, state) for c in (theirs, ours)], T * B)
                    rows.append(dict(cell=cell, hidden=H, batch=B, seq_len=T, torch_tokens_per_s=t,
                                     fastrnn_tokens_per_s=f, ratio=f / t))
    print(report.render_table(
        ["cell", "H", "B", "T", "torch.nn tok/s", "fastrnn.torch tok/s", "ratio"],
        [[r["cell"], str(r["hidden"]), str(r["batch"]), str(r["seq_len"]), f"{r['torch_tokens_per_s']:,.0f}",
          f"{r['fastrnn_tokens_per_s']:,.0f}", f"{r['ratio']:.2f}"] for r in rows]))
    gm = {c: geometric_mean([r["ratio"] for r in rows if r["cell"] == c]) for c in cells}
    print("geometric mean ratio " + ", ".join(f"{c} {v:.2f}" for c, v in gm.items())
          + f"; threads {get_num_threads()}")
    proj = proj_rows()
    print("\nLSTM with a projection (proj_size), input size H/2")
    print(report.render_table(
        ["H", "P", "B", "T", "torch.nn tok/s", "fastrnn.torch tok/s", "ratio"],
        [[str(r["hidden"]), str(r["proj_size"]), str(r["batch"]), str(r["seq_len"]),
          f"{r['torch_tokens_per_s']:,.0f}", f"{r['fastrnn_tokens_per_s']:,.0f}", f"{r['ratio']:.2f}"]
         for r in proj]))
    decode = decode_rows()
    names = list(decode[0]["tokens_per_s"])
    print("\nstep-by-step decoding, 2-layer LSTM, B = 1, tokens/s (ratio to torch.nn)")
    print(report.render_table(
        ["H"] + names,
        [[str(r["hidden"])] + [f"{r['tokens_per_s'][n]:,.0f} ({r['tokens_per_s'][n] / r['tokens_per_s'][names[0]]:.2f})"
                               for n in names] for r in decode]))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(machine=bench.machine_info(), results=rows, geometric_mean_ratio=gm,
                       projection=proj, decode=decode), f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
