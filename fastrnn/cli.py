"""`fastrnn info | bench` command line. Bad arguments exit with code 2 and a message."""
import argparse
import os
import sys
import time
from dataclasses import asdict

from . import __version__, backends, bench, report
from .progress import Progress
from .threads import get_num_threads, max_threads, set_num_threads


def _int_list(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _name_list(choices):
    def parse(text):
        vals = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vals if v not in choices]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {', '.join(choices)}")
        return vals
    return parse


def _positive_int(text):
    v = _int_list(text)
    if len(v) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return v[0]


def _threads(text):
    n = _positive_int(text)
    if n > max_threads():
        raise argparse.ArgumentTypeError(f"expected at most {max_threads()} (8 threads a CPU, at least 64), got {n}")
    return n


def build_parser():
    p = argparse.ArgumentParser(prog="fastrnn", description="Fused-kernel RNN, LSTM and GRU.")
    p.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, backends and why one is missing, threads, CPU, GPU")

    b = sub.add_parser("bench", help="throughput per sequence length over backends and peers")
    b.add_argument("--full", action="store_true", help="T = 1 and 16 ... 4096 in powers of 2, H in {256, 512}")
    b.add_argument("--cells", type=_name_list(("rnn_tanh", "rnn_relu", "lstm", "gru")))
    b.add_argument("--hidden", type=_int_list, help="hidden sizes, e.g. 256,512")
    b.add_argument("--batch", type=_int_list, help="batch sizes, e.g. 1,32")
    b.add_argument("--seq-len", type=_int_list, help="sequence lengths, e.g. 16,64,256")
    b.add_argument("--modes", type=_name_list(bench.MODES))
    b.add_argument("--backends", type=_name_list(bench.FASTRNN_BACKENDS + bench.PEERS + bench.BF16_TARGETS),
                   help="default: every available backend and peer but the bfloat16 ones "
                        "(cpu-bf16, torch-cpu-bf16: asked for by name)")
    b.add_argument("--threads", type=_threads, help="threads for fastrnn and torch")
    b.add_argument("--repeats", type=_positive_int, default=5)
    b.add_argument("--max-seconds", type=float, default=1.0, help="time budget per point (default 1)")
    b.add_argument("--out", default="bench-out", help="folder for the JSON, CSV and PNG (default bench-out)")
    b.add_argument("--name", default="fastrnn-bench", help="file name stem (default fastrnn-bench)")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="compare two saved runs instead of measuring")
    b.add_argument("--memory", action="store_true",
                   help="peak memory a point instead of time (CPU backends; a process each; "
                        "default grid T = 64, 256)")
    t = sub.add_parser("train", help="train an RNN language model (default corpus: the Python stdlib sources)")
    t.add_argument("--data", help="text file or folder (default: the standard library's .py files)")
    t.add_argument("--max-bytes", type=_positive_int, help="corpus size cap in characters (default 2,000,000)")
    t.add_argument("--tokenizer", choices=("char", "word"))
    t.add_argument("--vocab-size-max", type=_positive_int)
    t.add_argument("--cell", choices=("rnn_tanh", "rnn_relu", "lstm", "gru"))
    t.add_argument("--hidden", type=_positive_int)
    t.add_argument("--layers", type=_positive_int)
    t.add_argument("--emb", type=_positive_int, help="embedding size (default: hidden, or proj)")
    t.add_argument("--proj", type=_positive_int,
                   help="LSTM only: project each layer's state to this size (proj_size < hidden); the "
                        "outputs and the softmax layer are then this wide")
    t.add_argument("--dropout", type=float)
    t.add_argument("--tie", action="store_true", default=None, help="tie the output projection to the embedding")
    t.add_argument("--batch", type=_positive_int)
    t.add_argument("--bptt", type=_positive_int)
    t.add_argument("--optimizer", choices=("adam", "sgd"))
    t.add_argument("--lr", type=float)
    t.add_argument("--momentum", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--clip", type=float, help="clip gradients to this global norm (0: off; default 1)")
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--time-limit", type=float, help="stop (and validate, checkpoint) after this many seconds")
    t.add_argument("--max-steps", type=_positive_int)
    t.add_argument("--val-fraction", type=float)
    t.add_argument("--lr-decay", type=float, help="learning-rate factor when validation stops improving")
    t.add_argument("--patience", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--backend", choices=("auto",) + bench.FASTRNN_BACKENDS)
    t.add_argument("--precision", choices=("float32", "bfloat16"),
                   help="the RNN stack's and the decoder's products (bfloat16: CPUs with AVX512_BF16; default float32)")
    t.add_argument("--threads", type=_threads)
    t.add_argument("--out", default="lm-out", help="folder for checkpoint.npz and log.csv (default lm-out)")
    t.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.npz")
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in OUT even though it holds a checkpoint (replaced, with its log)")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--compare-reference", type=_positive_int, metavar="STEPS",
                   help="afterwards, time STEPS training steps on the cpu and reference backends")

    g = sub.add_parser("generate", help="generate text from a checkpoint")
    g.add_argument("checkpoint", help="checkpoint.npz written by fastrnn train")
    g.add_argument("--prompt", default="", help="seed text")
    g.add_argument("--length", type=int, default=200)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--beam", type=int, default=0, help="beam search with this many beams")
    g.add_argument("--seed", type=int, default=None, help="random seed (same seed, same text)")
    g.add_argument("--backend", choices=("auto",) + bench.FASTRNN_BACKENDS, default="auto")
    g.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: every product in bfloat16 (CPUs with AVX512_BF16; about 2x a token "
                        "at V = 10,000)")
    return p


TRAIN_KEYS = ("data", "max_bytes", "tokenizer", "vocab_size_max", "cell", "hidden", "layers", "emb", "proj",
              "dropout", "tie", "batch", "bptt", "optimizer", "lr", "momentum", "weight_decay", "clip",
              "epochs", "time_limit", "max_steps", "val_fraction", "lr_decay", "patience", "seed", "backend",
              "precision")


def cmd_train(args, parser):
    from .train import CheckpointError, Trainer
    if args.threads:
        set_num_threads(args.threads)
    if args.resume and args.overwrite:
        parser.error("argument --overwrite: not allowed with --resume")
    cfg = {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k) is not None}
    cfg["_explicit"] = tuple(k for k in cfg)
    for k, lo, hi in (("dropout", 0, 1), ("val_fraction", 0, 1)):
        if k in cfg and not lo <= cfg[k] < hi:
            parser.error(f"argument --{k.replace('_', '-')}: expected a number in [{lo}, {hi})")
    for k in ("lr", "time_limit"):
        if k in cfg and not cfg[k] > 0:
            parser.error(f"argument --{k.replace('_', '-')}: expected a positive number")
    try:
        trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.no_progress,
                          overwrite=args.overwrite)
    except (CheckpointError, ValueError, OSError) as exc:
        parser.error(str(exc))
    c = trainer.cfg
    proj = f" proj {c['proj']}" if c.get("proj") else ""
    print(f"fastrnn train: {c['cell']} H={c['hidden']}{proj} x {c['layers']} layers, vocab {len(trainer.vocab)} "
          f"({c['tokenizer']}), {len(trainer.train_ids):,} train / {len(trainer.val_ids):,} validation tokens, "
          f"backend {backends.resolve(c['backend'])}, {get_num_threads()} threads"
          + (f", {c['precision']} products" if c.get("precision", "float32") != "float32" else ""), flush=True)
    try:
        res = trainer.run()
    except KeyboardInterrupt:
        return 130
    unit = "character" if c["tokenizer"] == "char" else "word"
    print(f"validation: {res['val_loss']:.4f} nats = {res['val_bits']:.4f} bits per {unit} "
          f"(unigram-frequency baseline of the same data: {res['unigram_bits']:.4f} bits per {unit})")
    print(f"{res['steps']} steps, {res['tokens']:,} tokens in {res['elapsed_s']:.0f} s; "
          f"checkpoint {res['checkpoint']}, log {trainer.log_path}")
    if args.compare_reference:
        from .train import step_rates
        rates = step_rates(trainer, [b for b in ("cpu", "reference") if b in backends.available()],
                           args.compare_reference)
        line = ", ".join(f"{b} {r:,.0f} tokens/s" for b, r in rates.items())
        if len(rates) == 2:
            line += f": cpu/reference = {rates['cpu'] / rates['reference']:.1f}x"
        print(f"training speed, same model and batches ({args.compare_reference} steps each, "
              f"taking turns; median step): {line}")
    return 0


def cmd_generate(args, parser):
    from .train import CheckpointError, load_checkpoint, restore_model
    for name in ("length", "top_k", "beam"):
        if getattr(args, name) < 0:
            parser.error(f"argument --{name.replace('_', '-')}: expected >= 0")
    if not args.temperature > 0:
        parser.error("argument --temperature: expected a positive number")
    try:
        meta, arrays = load_checkpoint(args.checkpoint)
        model, vocab, _ = restore_model(meta, arrays, args.checkpoint, backend=args.backend)
    except CheckpointError as exc:
        parser.error(str(exc))
    model.eval()
    try:
        model.check_precision(args.precision)
    except (ValueError, TypeError, RuntimeError) as exc:   # the model or this machine cannot run it
        parser.error(f"argument --precision: {exc}")
    ids = model.generate(vocab.encode(args.prompt), args.length, temperature=args.temperature,
                         top_k=args.top_k, greedy=args.greedy, beam=args.beam, seed=args.seed,
                         precision=args.precision)
    sep = "" if vocab.kind == "char" else " "
    print(args.prompt + (sep if args.prompt else "") + vocab.decode(ids))
    return 0


def cmd_info(out=sys.stdout):
    info = bench.machine_info()
    print(f"fastrnn {__version__}  python {info['python']}  numpy {info['numpy']}", file=out)
    print(f"cpu: {info['cpu_model']} ({info['cpu_count']} cpus; features {' '.join(info['cpu_features'])})", file=out)
    print(f"threads: {get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})", file=out)
    print(f"gpu: {info['gpu'] or 'none'}", file=out)
    print("backends:", file=out)
    for name in backends.names():
        why = backends.why_unavailable(name)
        detail = "available"
        if why is None and name == "cpu":
            from .backends import cpu
            detail = f"available (kernels: {cpu.isa()}, OpenMP processors {cpu.omp_num_procs()})"
        elif why is None and name == "cuda":
            from .backends import cuda
            detail = f"available ({cuda.describe()})"
        elif why:
            detail = f"unavailable: {why}"
        print(f"  {name:14s} {detail}", file=out)
    targets, why = bench.available_targets()
    for peer in bench.PEERS + bench.BF16_TARGETS:
        print(f"  {peer:14s} {'available' if peer in targets else 'unavailable: ' + why.get(peer, '')}", file=out)
    return 0


def cmd_bench(args, parser):
    if args.compare:
        return cmd_compare(args, parser)
    if not 0 < args.max_seconds < float("inf"):
        parser.error("argument --max-seconds: expected a positive number")
    if not args.name or os.sep in args.name or (os.altsep and os.altsep in args.name):
        parser.error(f"argument --name: expected a file name stem without a folder, got {args.name!r}")
    if args.threads:
        set_num_threads(args.threads)
    if args.memory:
        grid = dict(bench.MEMORY_FULL_GRID if args.full else bench.MEMORY_GRID)
    else:
        grid = dict(bench.FULL_GRID if args.full else bench.QUICK_GRID)
    for k, v in (("cells", args.cells), ("hidden", args.hidden), ("batch", args.batch),
                 ("seq_len", args.seq_len), ("modes", args.modes)):
        if v:
            grid[k] = tuple(v)
    available, why = bench.available_targets()
    targets = args.backends or bench.default_targets(available)
    if args.memory:
        targets = _memory_targets(args, parser, targets)
    missing = [t for t in targets if t not in available]
    if missing:
        parser.error("argument --backends: not available here: " +
                     "; ".join(f"{t} ({why.get(t, 'unknown')})" for t in missing))
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        parser.error(f"argument --out: cannot create {args.out!r} ({exc.strerror})")
    if args.memory:
        return cmd_bench_memory(args, parser, grid, targets)
    cases = bench.grid_cases(targets=targets, **grid)
    peak = bench.matmul_peak_gflops()
    print(f"fastrnn bench: {len(cases)} points, backends {', '.join(targets)}, "
          f"{get_num_threads()} threads, numpy float32 matmul peak {peak:.0f} GFLOP/s", flush=True)
    progress = Progress(len(cases), not args.no_progress)
    label = lambda c: f"{c.cell} {c.mode} H={c.hidden} B={c.batch} T={c.seq_len} {c.backend}"
    try:
        rows = bench.run_cases(cases, peak, repeats=args.repeats, max_seconds=args.max_seconds,
                               on_step=lambda c: progress.step(label(c)))
    except MemoryError as exc:
        progress.close()
        parser.error(f"out of memory at {label(cases[progress.done])} ({exc}); "
                     "choose smaller --hidden, --batch or --seq-len")
    progress.close()
    bench.add_ratios(rows)
    print(report.results_table(rows))
    machine = bench.machine_info()
    stem = os.path.join(args.out, args.name)
    settings = dict(grid={k: list(v) for k, v in grid.items()}, backends=targets, repeats=args.repeats,
                    max_seconds=args.max_seconds, dtype="float32",
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    report.write_json(stem + ".json", machine, settings, peak, rows)
    report.write_csv(stem + ".csv", rows)
    title = f"{machine['cpu_model']}, {machine['threads']} threads" + (f", {machine['gpu']}" if machine["gpu"] else "")
    plotted = report.plot_throughput(stem + ".png", rows, title=title)
    print(f"wrote {stem}.json, {stem}.csv" + (f", {stem}.png" if plotted else
          " (plot skipped: matplotlib not installed; pip install 'fastrnn[plot]')"))
    return 0


def _memory_targets(args, parser, targets):
    """The CPU targets of --memory (it measures host memory), or a usage error."""
    from . import memory
    reason = memory.unavailable_reason()
    if reason:
        parser.error(f"argument --memory: {reason}")
    device = [t for t in targets if t not in memory.CPU_TARGETS]
    if args.backends and device:
        parser.error(f"argument --backends: --memory measures host memory; not {', '.join(device)} "
                     "(device memory)")
    return [t for t in targets if t in memory.CPU_TARGETS]


def cmd_bench_memory(args, parser, grid, targets):
    """fastrnn bench --memory: peak memory a point (fastrnn/memory.py), each in its own process."""
    from . import memory
    cases = bench.grid_cases(targets=targets, **grid)
    print(f"fastrnn bench --memory: {len(cases)} points, backends {', '.join(targets)}, "
          f"{get_num_threads()} threads, a process each", flush=True)
    progress = Progress(len(cases), not args.no_progress)
    rows = []
    for case in cases:
        try:
            rows.append(dict(asdict(case), input_size=case.inputs, **memory.measure(case, get_num_threads())))
        except RuntimeError as exc:
            progress.close()
            parser.error(str(exc))
        progress.step(f"{case.cell} {case.mode} H={case.hidden} B={case.batch} T={case.seq_len} {case.backend}")
    progress.close()
    memory.add_ratios(rows)
    print(report.memory_table(rows))
    print(memory.summary(rows))
    stem = os.path.join(args.out, args.name + "-memory")
    settings = dict(grid={k: list(v) for k, v in grid.items()}, backends=targets, calls=memory.CALLS,
                    dtype="float32", created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    report.write_memory_json(stem + ".json", bench.machine_info(), settings, rows)
    report.write_csv(stem + ".csv", rows, fields=report.MEMORY_CSV_FIELDS)
    print(f"wrote {stem}.json, {stem}.csv")
    return 0


def cmd_compare(args, parser):
    path_a, path_b = args.compare
    try:
        a, b = report.load_run(path_a), report.load_run(path_b)
    except ValueError as exc:
        parser.error(f"argument --compare: {exc}")
    rows = report.compare_rows(a, b)
    if not rows:
        parser.error("argument --compare: the two runs share no (cell, mode, H, B, T, backend) point")
    print(report.compare_table(rows, path_a, path_b))
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name + "-compare")
    report.write_csv(stem + ".csv", rows, fields=report.COMPARE_FIELDS)
    plotted = report.plot_compare(stem + ".png", a, b, path_a, path_b)
    print(f"wrote {stem}.csv" + (f", {stem}.png" if plotted else
          " (plot skipped: matplotlib not installed; pip install 'fastrnn[plot]')"))
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return cmd_info()
    if args.command == "train":
        return cmd_train(args, parser)
    if args.command == "generate":
        return cmd_generate(args, parser)
    return cmd_bench(args, parser)


if __name__ == "__main__":
    sys.exit(main())
