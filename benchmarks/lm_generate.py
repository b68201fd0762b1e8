"""Text generation a token at a time: fastrnn's RNNLM.generate against its torch twin.

    python benchmarks/lm_generate.py [--out benchmarks/results/lm-generate.json] [--smoke]

Greedy decoding (argmax: the same work on both sides, no sampler's randomness) of TOKENS
tokens after a 3-token prompt, ms a token. fastrnn in float32 and bfloat16
(generate(precision='bfloat16'), where the CPU has AVX512_BF16); torch's twin
(RNNLM.to_torch(), under inference_mode) in float32 and cast to bfloat16. The four take
turns run by run (bench.take_turns). Before timing, the prompt's logits from fastrnn and
torch are checked against each other (float32 to 1e-4, bfloat16 to 0.05 of the largest).
Models: the char LSTM (fastrnn train's default) and word-level LSTM and GRU, 2 layers.
"""
import argparse
import copy
import json
import os
import statistics

import numpy as np
import torch

from fastrnn import backends, bench, report
from fastrnn.lm import RNNLM
from fastrnn.threads import get_num_threads

# name, RNNLM keywords; --smoke swaps in SMOKE (tiny models, one timed run each)
FULL = dict(models=[("char LSTM", dict(vocab_size=100, hidden_size=256, cell="lstm")),
                    ("word LSTM", dict(vocab_size=10000, hidden_size=512, cell="lstm")),
                    ("word GRU", dict(vocab_size=10000, hidden_size=512, cell="gru"))],
            tokens=64, timing=dict(repeats=21, max_seconds=4.0, warmup=1))
SMOKE = dict(models=[("tiny LSTM", dict(vocab_size=50, hidden_size=8, cell="lstm")),
                     ("tiny GRU", dict(vocab_size=50, hidden_size=8, cell="gru"))],
             tokens=3, timing=dict(repeats=1, min_repeats=1, max_seconds=0.0, warmup=1))
PROMPT = [1, 2, 3]
VARIANTS = ("fastrnn f32", "fastrnn bf16", "torch f32", "torch bf16")


def torch_greedy(t, n):
    """n greedy tokens from torch twin t after PROMPT, and the prompt's last logits."""
    with torch.inference_mode():
        out, h = t.rnn(t.embedding(torch.tensor(PROMPT)[:, None]))
        z = first = t.decoder(out[-1, 0])
        toks = []
        for _ in range(n):
            toks.append(int(z.argmax()))
            out, h = t.rnn(t.embedding(torch.tensor([[toks[-1]]])), h)
            z = t.decoder(out[-1, 0])
    return toks, first.float().numpy()


def check_logits(model, twin, twin_bf16, bf16):
    """The prompt's logits of each fastrnn variant against torch's of the same precision."""
    z32, _ = model.logits(np.array([PROMPT]).T)
    pairs = [("float32", z32[-1, 0], torch_greedy(twin, 0)[1], 1e-4)]
    if bf16:
        with model._generation_precision("bfloat16"):
            zb, _ = model.logits(np.array([PROMPT]).T)
        pairs.append(("bfloat16", zb[-1, 0], torch_greedy(twin_bf16, 0)[1], 0.05))
    for what, ours, theirs, tol in pairs:
        err = np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max())
        if not err <= tol:
            raise RuntimeError(f"{what} logits: fastrnn and torch disagree by {err:.3g} (tolerance {tol})")


def run_model(name, kw, grid):
    model = RNNLM(**kw, num_layers=2, backend="cpu", seed=0).eval()
    twin = model.to_torch().eval()
    twin_bf16 = copy.deepcopy(twin).to(torch.bfloat16)
    bf16 = backends.get("cpu").bf16_unavailable_reason() is None
    check_logits(model, twin, twin_bf16, bf16)
    n = grid["tokens"]
    runs = [lambda: model.generate(PROMPT, n, greedy=True),
            (lambda: model.generate(PROMPT, n, greedy=True, precision="bfloat16")) if bf16 else None,
            lambda: torch_greedy(twin, n), lambda: torch_greedy(twin_bf16, n)]
    runs = {v: r for v, r in zip(VARIANTS, runs) if r is not None}   # taking turns in VARIANTS' order
    times = bench.take_turns(list(runs.values()), **grid["timing"])
    ms = dict.fromkeys(VARIANTS)   # None: not run here (fastrnn bf16 without AVX512_BF16)
    ms.update({v: 1e3 * statistics.median(ts) / n for v, ts in zip(runs, times)})
    return dict(model=name, **kw, layers=2, tokens=n, ms_per_token=ms)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "lm-generate.json"))
    p.add_argument("--smoke", action="store_true", help="tiny models, one timed run each: runs end to end in "
                   "seconds, measures nothing (CI)")
    args = p.parse_args(argv)
    torch.set_num_threads(get_num_threads())
    grid = SMOKE if args.smoke else FULL
    rows = [run_model(name, kw, grid) for name, kw in grid["models"]]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    ratio = lambda a, b: "-" if a is None or b is None else f"{b / a:.2f}"
    print(report.render_table(
        ["model", "V", "H"] + [f"{v} ms" for v in VARIANTS] + ["bf16 vs f32", "vs torch f32", "vs torch bf16"],
        [[r["model"], str(r["vocab_size"]), str(r["hidden_size"])] + [fmt(r["ms_per_token"][v]) for v in VARIANTS]
         + [ratio(r["ms_per_token"]["fastrnn bf16"], r["ms_per_token"]["fastrnn f32"]),
            ratio(r["ms_per_token"]["fastrnn f32"], r["ms_per_token"]["torch f32"]),
            ratio(r["ms_per_token"]["fastrnn bf16"], r["ms_per_token"]["torch bf16"])] for r in rows]))
    print(f"threads {get_num_threads()}; greedy decoding, ms a token; ratios: the other's time / ours")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(machine=bench.machine_info(), torch=torch.__version__, smoke=args.smoke,
                       threads=get_num_threads(), results=rows), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
