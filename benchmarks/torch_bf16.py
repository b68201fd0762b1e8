"""bfloat16 modules' inference: fastrnn.torch against torch.nn, same run (needs PyTorch).

    python benchmarks/torch_bf16.py [--out benchmarks/results/torch-bf16.json]

A torch module cast to bfloat16 and called without autograd recording: torch.nn runs its
bfloat16 kernels (oneDNN, bfloat16 products), fastrnn.torch its precision='bfloat16' ones
(the same arithmetic) reading the module's bfloat16 weights as they are. Each point times
four variants taking turns call by call: torch.nn and fastrnn.torch, float32 and bfloat16.
Grid: LSTM and GRU, one layer, H {256, 512} x B {1, 32} x T {1, 64, 256}; then 64 steps of
one-token decoding through a 2-layer LSTM (B = 1, hx carried), as generation calls it.
On a CPU without AVX512_BF16 fastrnn.torch computes bfloat16 modules in float32 (the
table says which).
"""
import json
import os
import statistics

import torch

import fastrnn.torch as ft
from fastrnn import backends, bench, report
from fastrnn.threads import get_num_threads
from torch_dropin import parse_args   # benchmarks/ is this script's folder

CELLS = {"LSTM": (torch.nn.LSTM, ft.LSTM), "GRU": (torch.nn.GRU, ft.GRU)}
VARIANTS = ("torch f32", "torch bf16", "fastrnn f32", "fastrnn bf16")
DECODE_STEPS = 64


def _modules(cell, H, layers):
    """The four variants' modules, one set of weights (bfloat16 values, so all four agree)."""
    theirs, ours = CELLS[cell]
    state = {k: v.bfloat16().float() for k, v in theirs(H, H, num_layers=layers).state_dict().items()}
    mods = []
    for cls, dtype in ((theirs, torch.float32), (theirs, torch.bfloat16), (ours, torch.float32), (ours, torch.bfloat16)):
        m = cls(H, H, num_layers=layers).eval()
        m.load_state_dict(state)
        mods.append(m.to(dtype))
    return mods


def _tokens_per_s(runs, tokens):
    times = bench.take_turns(runs, repeats=41, max_seconds=3.0, warmup=2)
    return [tokens / statistics.median(ts) for ts in times]


def sequence_rows(cells):
    rows = []
    for cell in cells:
        for H in (256, 512):
            mods = _modules(cell, H, 1)
            for B in (1, 32):
                for T in (1, 64, 256):
                    x = torch.randn(T, B, H)
                    runs = []
                    for m in mods:
                        xm = x.to(next(m.parameters()).dtype)

                        def run(m=m, xm=xm):
                            with torch.inference_mode():
                                m(xm)
                        runs.append(run)
                    res = dict(zip(VARIANTS, _tokens_per_s(runs, T * B)))
                    rows.append(dict(cell=cell, hidden=H, batch=B, seq_len=T, tokens_per_s=res))
    return rows


def decode_rows():
    rows = []
    for H in (256, 512):
        mods = _modules("LSTM", H, 2)
        xs = torch.randn(DECODE_STEPS, 1, 1, H)
        runs = []
        for m in mods:
            xm = xs.to(next(m.parameters()).dtype)

            def run(m=m, xm=xm):
                hx = None
                with torch.inference_mode():
                    for x in xm:
                        _, hx = m(x, hx)
            runs.append(run)
        rows.append(dict(hidden=H, layers=2, tokens_per_s=dict(zip(VARIANTS, _tokens_per_s(runs, DECODE_STEPS)))))
    return rows


def _cells(r):
    t = r["tokens_per_s"]
    return [f"{t[v]:,.0f}" for v in VARIANTS] + [f"{t['fastrnn bf16'] / t['fastrnn f32']:.2f}",
                                                 f"{t['fastrnn bf16'] / t['torch bf16']:.2f}"]


def main(argv=None):
    out, cells = parse_args(argv, "torch-bf16.json", CELLS)
    why_not = backends.get("cpu").bf16_unavailable_reason() if "cpu" in backends.available() else "no cpu backend"
    print("fastrnn bf16: " + ("bfloat16 products" if not why_not else f"float32 ({why_not})"))
    heads = list(VARIANTS) + ["bf16/f32", "vs torch bf16"]
    rows = sequence_rows(cells)
    print(report.render_table(["cell", "H", "B", "T"] + heads,
                              [[r["cell"], str(r["hidden"]), str(r["batch"]), str(r["seq_len"])] + _cells(r)
                               for r in rows]))
    decode = decode_rows()
    print(f"\none-token decoding, 2-layer LSTM, B = 1, {DECODE_STEPS} steps, tokens/s")
    print(report.render_table(["H"] + heads, [[str(r["hidden"])] + _cells(r) for r in decode]))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(machine=bench.machine_info(), threads=get_num_threads(), fastrnn_bf16_products=not why_not,
                       results=rows, decode=decode), f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
