"""A language-model training step, fastrnn's RNNLM against the same model in PyTorch.

    python benchmarks/lm_vs_torch.py [--out benchmarks/results/lm-vs-torch.json] [--quick]
    python benchmarks/lm_vs_torch.py --precision bfloat16   # -> lm-vs-torch-bf16.json

A step is what `fastrnn train` does per window: zero the gradients, forward (embedding,
RNN stack, decoder, softmax cross-entropy), backward, clip to a global norm, Adam. The torch
side is RNNLM.to_torch() (torch.nn.Embedding/LSTM/GRU/Linear, F.cross_entropy,
clip_grad_norm_, torch.optim.Adam) with the same weights and threads; the hidden state is
carried between windows on both. Before timing, one step on each checks that the two
losses agree. The two take turns step by step (bench.take_turns), so a shared machine's
drift hits them alike. Token ids are random: the work does not depend on them.

--precision bfloat16: RNNLM(precision='bfloat16') (the stack and the decoder on bfloat16
products) against the twin's forward under torch.autocast('cpu', bfloat16), torch's way to
train in bfloat16 (its LSTM, RNN and Linear compute in bfloat16 there, its GRU in float32).
"""
import argparse
import json
import os
import statistics
import warnings

import numpy as np
import torch

from fastrnn import backends, bench, report
from fastrnn.lm import RNNLM
from fastrnn.lm_torch import detach
from fastrnn.optim import Adam
from fastrnn.threads import get_num_threads
from fastrnn.train import train_step

# name, RNNLM keywords, batch, bptt, clip: the README's char model (fastrnn train's
# defaults), its GRU, and a word-level model with and without an LSTM projection
CONFIGS = [
    ("char LSTM", dict(vocab_size=100, hidden_size=256, num_layers=2, cell="lstm"), 32, 64, 1.0),
    ("char GRU", dict(vocab_size=100, hidden_size=256, num_layers=2, cell="gru"), 32, 64, 1.0),
    ("word LSTM", dict(vocab_size=10000, hidden_size=512, num_layers=2, cell="lstm"), 32, 35, 0.25),
    ("word LSTM, proj 256", dict(vocab_size=10000, hidden_size=512, num_layers=2, cell="lstm",
                                 proj_size=256), 32, 35, 0.25),
    ("word LSTM, proj 128", dict(vocab_size=10000, hidden_size=512, num_layers=2, cell="lstm",
                                 proj_size=128), 32, 35, 0.25),
]
LR = 1e-3
WINDOWS = 4   # distinct windows cycled through (each step's input differs from the last)


def windows(V, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))) for _ in range(WINDOWS)]


def fastrnn_runner(model, data, clip):
    opt = Adam(model, LR)
    state = dict(i=0, hidden=None)

    def run():
        x, y = data[state["i"] % WINDOWS]
        state["i"] += 1
        _, state["hidden"] = train_step(model, opt, x, y, state["hidden"], clip)
    return run


def _autocast(precision):
    """torch's bfloat16 training context for precision 'bfloat16', else none."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")


def torch_runner(model, data, clip, precision="float32"):
    opt = torch.optim.Adam(model.parameters(), LR)
    data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
    state = dict(i=0, hidden=None)

    def run():
        x, y = data[state["i"] % WINDOWS]
        state["i"] += 1
        opt.zero_grad()
        with _autocast(precision):
            loss, hidden = model(x, y, state["hidden"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        state["hidden"] = detach(hidden)
    return run


def first_losses(kw, data, precision="float32"):
    """The first window's loss from each side, on fresh copies of one model."""
    m = RNNLM(**kw, backend="cpu", seed=0, precision=precision)
    t = m.to_torch()
    x, y = data[0]
    with torch.no_grad(), _autocast(precision):
        theirs = t(torch.from_numpy(x), torch.from_numpy(y))[0].item()
    return m.forward(x, y)[0], theirs


# how far the first losses may lie apart: float32 sums in another order; bfloat16 operands
# rounded the same way but products grouped differently by the two libraries
AGREE = {"float32": 1e-4, "bfloat16": 1e-2}


def run_config(name, kw, B, T, clip, max_seconds, precision="float32"):
    data = windows(kw["vocab_size"], B, T)
    ours, theirs = first_losses(kw, data, precision)
    if abs(ours - theirs) > AGREE[precision] * abs(theirs):
        raise RuntimeError(f"{name}: the two models disagree before timing (loss {ours} against {theirs})")
    m = RNNLM(**kw, backend="cpu", seed=0, precision=precision)
    runs = [fastrnn_runner(m, data, clip), torch_runner(m.to_torch(), data, clip, precision)]
    times = bench.take_turns(runs, repeats=15, max_seconds=max_seconds, min_repeats=5, warmup=2)
    f_ms, t_ms = (1e3 * statistics.median(ts) for ts in times)
    return dict(model=name, **kw, precision=precision, batch=B, bptt=T, clip=clip, fastrnn_ms=f_ms, torch_ms=t_ms,
                fastrnn_tokens_per_s=B * T / f_ms * 1e3, torch_tokens_per_s=B * T / t_ms * 1e3,
                ratio=t_ms / f_ms, first_loss=ours, first_loss_torch=theirs, samples=len(times[0]))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", help="default benchmarks/results/lm-vs-torch[-bf16].json")
    p.add_argument("--quick", action="store_true", help="the char models only, short timing (a smoke run)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: fastrnn's bfloat16 LM against torch under CPU autocast")
    args = p.parse_args(argv)
    bf16 = args.precision == "bfloat16"
    if args.out is None:
        args.out = os.path.join(os.path.dirname(__file__), "results",
                                "lm-vs-torch-bf16.json" if bf16 else "lm-vs-torch.json")
    if bf16:
        why = backends.why_no_bf16(backends.get("cpu"))
        if why:
            raise SystemExit(f"--precision bfloat16: {why}")
    torch.set_num_threads(get_num_threads())
    warnings.filterwarnings("ignore", "LSTM with projections")   # torch: its oneDNN path has none
    configs = CONFIGS[:2] if args.quick else CONFIGS
    rows = [run_config(*c, max_seconds=2.0 if args.quick else 20.0, precision=args.precision) for c in configs]
    print(report.render_table(
        ["model", "V", "H", "P", "B", "T", "fastrnn ms", "torch ms", "fastrnn tok/s", "torch tok/s", "ratio"],
        [[r["model"], str(r["vocab_size"]), str(r["hidden_size"]), str(r.get("proj_size", 0)),
          str(r["batch"]), str(r["bptt"]), f"{r['fastrnn_ms']:.1f}", f"{r['torch_ms']:.1f}",
          f"{r['fastrnn_tokens_per_s']:,.0f}", f"{r['torch_tokens_per_s']:,.0f}", f"{r['ratio']:.2f}"]
         for r in rows]))
    print(f"{args.precision}, threads {get_num_threads()}; ratio = torch step time / fastrnn step time"
          + ("; torch under CPU autocast (its GRU computes in float32 there)" if bf16 else ""))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(machine=bench.machine_info(), torch=torch.__version__, results=rows), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
