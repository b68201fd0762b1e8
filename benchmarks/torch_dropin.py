"""A PyTorch training step with fastrnn.torch.LSTM/GRU/RNN against torch.nn's, same run.

    python benchmarks/torch_dropin.py [--out benchmarks/results/torch-dropin.json]
                                      [--cells LSTM,GRU,RNN] [--smoke]

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

# The grid and the timing; --smoke swaps in SMOKE: tiny sizes and one timed call a point,
# so that CI runs the script end to end in seconds (it measures nothing).
FULL = dict(hs=(128, 512), bs=(1, 32), ts=(32, 256), proj=((512, 128), (1024, 256)), decode_hs=(256, 512),
            decode_steps=64, timing=dict(repeats=41, max_seconds=3.0, warmup=2))
SMOKE = dict(hs=(8,), bs=(1, 3), ts=(1, 4), proj=((8, 3),), decode_hs=(8,), decode_steps=2,
             timing=dict(repeats=1, min_repeats=1, max_seconds=0.0, warmup=1))


F32_TOL = 1e-4   # float32 agreement, relative to max(1, |torch's value|)


def check_agree(results, tol, what):
    """Raise unless each entry of `results` (a tuple of tensors a side: outputs, input
    gradient) is within tol of the first side's, relative to max(1, its largest value): the
    timed calls must compute the same thing."""
    for side in results[1:]:
        for ref, got in zip(results[0], side):
            err = (got.float() - ref.float()).abs().max().item() / max(1.0, ref.float().abs().max().item())
            if not err <= tol:
                raise RuntimeError(f"{what}: the sides disagree by {err:.3g} (tolerance {tol})")


def step_runs(classes, state, x, g, what, **kw):
    """A training step (forward, loss <out, g>, backward) for a module of each of `classes`
    built with kw and loaded with `state`, after checking that the modules' outputs and
    input gradients agree on x."""
    runs, results = [], []
    for cls in classes:
        m = cls(**kw)
        m.load_state_dict(state)
        xm = x.detach().clone().requires_grad_()
        out, _ = m(xm)
        out.backward(g)
        results.append((out.detach(), xm.grad.clone()))

        def run(m=m, xm=xm):
            out, _ = m(xm)
            out.backward(g)
        runs.append(run)
    check_agree(results, F32_TOL, what)
    return runs


def tokens_per_s(runs, tokens, timing):
    """Tokens a second of each of `runs` (median of its timed calls), the runs taking turns
    call by call (bench.take_turns) so a shared machine's drift hits them alike; short
    calls get more rounds. `timing`: take_turns' keywords (a grid's "timing")."""
    times = bench.take_turns(runs, **timing)
    return [tokens / statistics.median(ts) for ts in times]


def proj_rows(grid):
    """Training steps of LSTM(H // 2, H, proj_size=P), torch.nn against fastrnn.torch."""
    # torch notes once that oneDNN has no projection and it runs its own implementation
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    rows = []
    for H, P in grid["proj"]:
        state = torch.nn.LSTM(H // 2, H, proj_size=P).state_dict()
        for B in grid["bs"]:
            for T in grid["ts"]:
                runs = step_runs((torch.nn.LSTM, ft.LSTM), state, torch.randn(T, B, H // 2), torch.randn(T, B, P),
                                 f"LSTM H={H} P={P} B={B} T={T}", input_size=H // 2, hidden_size=H, proj_size=P)
                t, f = tokens_per_s(runs, T * B, grid["timing"])
                rows.append(dict(hidden=H, proj_size=P, batch=B, seq_len=T, torch_tokens_per_s=t,
                                 fastrnn_tokens_per_s=f, ratio=f / t))
    return rows


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def decode_runner(cls, H, state, frozen, xs):
    """One-token calls of a 2-layer LSTM (B = 1) over xs, hx carried; a call returns the
    last output and state."""
    m = cls(H, H, num_layers=2)
    m.load_state_dict(state)

    def run():
        hx = None
        with torch.no_grad(), (fastrnn.frozen_weights() if frozen else contextlib.nullcontext()):
            for x in xs:
                out, hx = m(x, hx)
        return (out, *hx)
    return run


def decode_rows(grid):
    variants = (("torch.nn.LSTM", torch.nn.LSTM, False), ("fastrnn.torch.LSTM", ft.LSTM, False),
                ("fastrnn.torch.LSTM, frozen_weights", ft.LSTM, True))
    rows = []
    steps = grid["decode_steps"]
    for H in grid["decode_hs"]:
        state = torch.nn.LSTM(H, H, num_layers=2).state_dict()
        xs = torch.randn(steps, 1, 1, H)
        runs = [decode_runner(cls, H, state, frozen, xs) for _, cls, frozen in variants]
        check_agree([run() for run in runs], F32_TOL, f"decoding H={H}")
        res = dict(zip([v[0] for v in variants], tokens_per_s(runs, steps, grid["timing"])))
        rows.append(dict(hidden=H, layers=2, tokens_per_s=res))
    return rows


def parse_args(argv, out_name, cells):
    """(--out path, --cells list, --smoke) of a torch comparison script; `cells` the names
    it knows. Also gives torch fastrnn's thread count."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", out_name))
    p.add_argument("--cells", default=",".join(cells), help="comma-separated, of " + ",".join(cells))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one timed call a point: runs end to "
                   "end in seconds, measures nothing (CI)")
    args = p.parse_args(argv)
    chosen = args.cells.split(",")
    unknown = [c for c in chosen if c not in cells]
    if unknown:
        p.error(f"--cells: unknown {unknown}, expected some of {list(cells)}")
    torch.set_num_threads(get_num_threads())
    return args.out, chosen, args.smoke


def main(argv=None):
    out, cells, smoke = parse_args(argv, "torch-dropin.json", CELLS)
    grid = SMOKE if smoke else FULL
    rows = []
    for cell in cells:
        theirs, ours = CELLS[cell]
        for H in grid["hs"]:
            for B in grid["bs"]:
                for T in grid["ts"]:
                    state = theirs(H, H).state_dict()
                    runs = step_runs((theirs, ours), state, torch.randn(T, B, H), torch.randn(T, B, H),
                                     f"{cell} H={H} B={B} T={T}", input_size=H, hidden_size=H)
                    t, f = tokens_per_s(runs, T * B, grid["timing"])
                    rows.append(dict(cell=cell, hidden=H, batch=B, seq_len=T, torch_tokens_per_s=t,
                                     fastrnn_tokens_per_s=f, ratio=f / t))
    print(report.render_table(
        ["cell", "H", "B", "T", "torch.nn tok/s", "fastrnn.torch tok/s", "ratio"],
        [[r["cell"], str(r["hidden"]), str(r["batch"]), str(r["seq_len"]), f"{r['torch_tokens_per_s']:,.0f}",
          f"{r['fastrnn_tokens_per_s']:,.0f}", f"{r['ratio']:.2f}"] for r in rows]))
    gm = {c: geometric_mean([r["ratio"] for r in rows if r["cell"] == c]) for c in cells}
    print("geometric mean ratio " + ", ".join(f"{c} {v:.2f}" for c, v in gm.items())
          + f"; threads {get_num_threads()}")
    proj = proj_rows(grid)
    print("\nLSTM with a projection (proj_size), input size H/2")
    print(report.render_table(
        ["H", "P", "B", "T", "torch.nn tok/s", "fastrnn.torch tok/s", "ratio"],
        [[str(r["hidden"]), str(r["proj_size"]), str(r["batch"]), str(r["seq_len"]),
          f"{r['torch_tokens_per_s']:,.0f}", f"{r['fastrnn_tokens_per_s']:,.0f}", f"{r['ratio']:.2f}"]
         for r in proj]))
    decode = decode_rows(grid)
    names = list(decode[0]["tokens_per_s"])
    print("\nstep-by-step decoding, 2-layer LSTM, B = 1, tokens/s (ratio to torch.nn)")
    print(report.render_table(
        ["H"] + names,
        [[str(r["hidden"])] + [f"{r['tokens_per_s'][n]:,.0f} ({r['tokens_per_s'][n] / r['tokens_per_s'][names[0]]:.2f})"
                               for n in names] for r in decode]))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(machine=bench.machine_info(), smoke=smoke, results=rows, geometric_mean_ratio=gm,
                       projection=proj, decode=decode), f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
