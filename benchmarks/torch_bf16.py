"""bfloat16 modules' inference and training: fastrnn.torch against torch.nn, same run (needs PyTorch).

    python benchmarks/torch_bf16.py [--out benchmarks/results/torch-bf16.json] [--cells LSTM,GRU] [--smoke]

A torch module cast to bfloat16 and called without autograd recording: torch.nn runs its
bfloat16 kernels (oneDNN, bfloat16 products), fastrnn.torch its precision='bfloat16' ones
(the same arithmetic) reading the module's bfloat16 weights as they are. Each point times
four variants taking turns call by call: torch.nn and fastrnn.torch, float32 and bfloat16.
Grid: LSTM and GRU, one layer, H {256, 512} x B {1, 32} x T {1, 64, 256}; then 64 steps of
one-token decoding through a 2-layer LSTM (B = 1, hx carried), as generation calls it; then
training steps (forward, backward of <out, g>) at T {64, 256}, where both libraries' bfloat16
modules run bfloat16 products in backprop too. On a CPU without AVX512_BF16
fastrnn.torch computes bfloat16 modules in float32 (the table says which).
"""
import json
import os

import torch

import fastrnn.torch as ft
from fastrnn import backends, bench, report
from fastrnn.threads import get_num_threads
from torch_dropin import F32_TOL, check_agree, parse_args, tokens_per_s   # benchmarks/ is this script's folder

CELLS = {"LSTM": (torch.nn.LSTM, ft.LSTM), "GRU": (torch.nn.GRU, ft.GRU)}
VARIANTS = ("torch f32", "torch bf16", "fastrnn f32", "fastrnn bf16")
BF16_TOL = 0.05   # bfloat16 variants against torch f32 (measured at most 1.3e-2 on this grid)
# --smoke swaps in SMOKE: tiny sizes, one timed call a point (CI runs the script end to end)
FULL = dict(hs=(256, 512), bs=(1, 32), ts=(1, 64, 256), decode_steps=64, train_ts=(64, 256),
            timing=dict(repeats=41, max_seconds=3.0, warmup=2))
SMOKE = dict(hs=(8,), bs=(1, 3), ts=(1, 4), decode_steps=2, train_ts=(4,),
             timing=dict(repeats=1, min_repeats=1, max_seconds=0.0, warmup=1))
TRAIN_TOL = 0.1   # bfloat16 training steps' outputs and input gradients against torch f32


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


def check_variants(results, what, bf16_tol=BF16_TOL):
    """Each variant's (output, state) of one call, or (output, input gradient) of a training
    step, against torch f32's: the float32 ones to F32_TOL, the bfloat16 ones to bf16_tol."""
    flat = [(out, *hx) if isinstance(hx, tuple) else (out, hx) for out, hx in results]
    f32, bf16 = ([flat[VARIANTS.index(v)] for v in names] for names in
                 (("torch f32", "fastrnn f32"), ("torch f32", "torch bf16", "fastrnn bf16")))
    check_agree(f32, F32_TOL, what + ", float32")
    check_agree(bf16, bf16_tol, what + ", bfloat16")


def sequence_rows(cells, grid):
    rows = []
    for cell in cells:
        for H in grid["hs"]:
            mods = _modules(cell, H, 1)
            for B in grid["bs"]:
                for T in grid["ts"]:
                    x = torch.randn(T, B, H)
                    runs = []
                    for m in mods:
                        xm = x.to(next(m.parameters()).dtype)

                        def run(m=m, xm=xm):
                            with torch.inference_mode():
                                return m(xm)
                        runs.append(run)
                    check_variants([run() for run in runs], f"{cell} H={H} B={B} T={T}")
                    res = dict(zip(VARIANTS, tokens_per_s(runs, T * B, grid["timing"])))
                    rows.append(dict(cell=cell, hidden=H, batch=B, seq_len=T, tokens_per_s=res))
    return rows


def decode_rows(grid):
    rows = []
    steps = grid["decode_steps"]
    for H in grid["hs"]:
        mods = _modules("LSTM", H, 2)
        xs = torch.randn(steps, 1, 1, H)
        runs = []
        for m in mods:
            xm = xs.to(next(m.parameters()).dtype)

            def run(m=m, xm=xm):
                hx = None
                with torch.inference_mode():
                    for x in xm:
                        out, hx = m(x, hx)
                return out, hx
            runs.append(run)
        check_variants([run() for run in runs], f"decoding H={H}")
        rows.append(dict(hidden=H, layers=2, decode_steps=steps,
                         tokens_per_s=dict(zip(VARIANTS, tokens_per_s(runs, steps, grid["timing"])))))
    return rows


def training_rows(cells, grid):
    """Training steps of the four variants (the bfloat16 ones: bfloat16 products in the
    forward and in BPTT, gradients in bfloat16)."""
    rows = []
    for cell in cells:
        for H in grid["hs"]:
            mods = [m.train() for m in _modules(cell, H, 1)]
            for B in grid["bs"]:
                for T in grid["train_ts"]:
                    x, g = torch.randn(T, B, H), torch.randn(T, B, H)
                    runs, results = [], []
                    for m in mods:
                        dt = next(m.parameters()).dtype
                        xm, gm = x.to(dt).clone().requires_grad_(), g.to(dt)   # a leaf of its own

                        def run(m=m, xm=xm, gm=gm):
                            xm.grad = None
                            out, _ = m(xm)
                            out.backward(gm)
                            return out.detach(), xm.grad.clone()
                        runs.append(run)
                        results.append(run())
                    # bfloat16 gradients summed over T steps: looser than one call's outputs
                    check_variants(results, f"training {cell} H={H} B={B} T={T}", TRAIN_TOL)
                    res = dict(zip(VARIANTS, tokens_per_s(runs, T * B, grid["timing"])))
                    rows.append(dict(cell=cell, hidden=H, batch=B, seq_len=T, tokens_per_s=res))
    return rows


def _cells(r):
    t = r["tokens_per_s"]
    return [f"{t[v]:,.0f}" for v in VARIANTS] + [f"{t['fastrnn bf16'] / t['fastrnn f32']:.2f}",
                                                 f"{t['fastrnn bf16'] / t['torch bf16']:.2f}"]


def main(argv=None):
    out, cells, smoke = parse_args(argv, "torch-bf16.json", CELLS)
    grid = SMOKE if smoke else FULL
    why_not = backends.get("cpu").bf16_unavailable_reason() if "cpu" in backends.available() else "no cpu backend"
    print("fastrnn bf16: " + ("bfloat16 products" if not why_not else f"float32 ({why_not})"))
    heads = list(VARIANTS) + ["bf16/f32", "vs torch bf16"]
    rows = sequence_rows(cells, grid)
    print(report.render_table(["cell", "H", "B", "T"] + heads,
                              [[r["cell"], str(r["hidden"]), str(r["batch"]), str(r["seq_len"])] + _cells(r)
                               for r in rows]))
    decode = decode_rows(grid)
    print(f"\none-token decoding, 2-layer LSTM, B = 1, {grid['decode_steps']} steps, tokens/s")
    print(report.render_table(["H"] + heads, [[str(r["hidden"])] + _cells(r) for r in decode]))
    train = training_rows(cells, grid)
    print("\ntraining steps (forward + backward), tokens/s")
    print(report.render_table(["cell", "H", "B", "T"] + heads,
                              [[r["cell"], str(r["hidden"]), str(r["batch"]), str(r["seq_len"])] + _cells(r)
                               for r in train]))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(machine=bench.machine_info(), smoke=smoke, threads=get_num_threads(),
                       fastrnn_bf16_products=not why_not, results=rows, decode=decode, training=train), f,
                  indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
