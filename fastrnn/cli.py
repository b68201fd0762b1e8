"""`fastrnn info | bench` command line. Bad arguments exit with code 2 and a message."""
import argparse
import os
import sys
import time

from . import __version__, backends, bench, report
from .threads import get_num_threads, set_num_threads


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


def build_parser():
    p = argparse.ArgumentParser(prog="fastrnn", description="Fused-kernel RNN, LSTM and GRU.")
    p.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, backends and why one is missing, threads, CPU, GPU")

    b = sub.add_parser("bench", help="throughput per sequence length over backends and peers")
    b.add_argument("--full", action="store_true", help="T = 16 ... 4096 in powers of 2, H in {256, 512}")
    b.add_argument("--cells", type=_name_list(("rnn_tanh", "rnn_relu", "lstm", "gru")))
    b.add_argument("--hidden", type=_int_list, help="hidden sizes, e.g. 256,512")
    b.add_argument("--batch", type=_int_list, help="batch sizes, e.g. 1,32")
    b.add_argument("--seq-len", type=_int_list, help="sequence lengths, e.g. 16,64,256")
    b.add_argument("--modes", type=_name_list(bench.MODES))
    b.add_argument("--backends", type=_name_list(bench.FASTRNN_BACKENDS + bench.PEERS),
                   help="default: every available backend and peer")
    b.add_argument("--threads", type=_positive_int, help="threads for fastrnn and torch")
    b.add_argument("--repeats", type=_positive_int, default=5)
    b.add_argument("--max-seconds", type=float, default=1.0, help="time budget per point (default 1)")
    b.add_argument("--out", default="bench-out", help="folder for the JSON, CSV and PNG (default bench-out)")
    b.add_argument("--name", default="fastrnn-bench", help="file name stem (default fastrnn-bench)")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="compare two saved runs instead of measuring")
    return p


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
            detail = f"available (kernels: {cpu.isa()}, OpenMP max threads {cpu.lib.fastrnn_omp_max_threads()})"
        elif why is None and name == "cuda":
            from .backends import cuda
            detail = f"available ({cuda.describe()})"
        elif why:
            detail = f"unavailable: {why}"
        print(f"  {name:10s} {detail}", file=out)
    targets, why = bench.available_targets()
    for peer in bench.PEERS:
        print(f"  {peer:10s} {'available' if peer in targets else 'unavailable: ' + why.get(peer, '')}", file=out)
    return 0


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal, or forced)."""

    def __init__(self, total, enabled):
        self.total, self.enabled, self.done, self.t0 = total, enabled, 0, time.time()

    def step(self, label):
        self.done += 1
        if not self.enabled:
            return
        frac = self.done / self.total
        bar = "#" * int(30 * frac)
        eta = (time.time() - self.t0) / self.done * (self.total - self.done)
        sys.stderr.write(f"\r[{bar:30s}] {self.done}/{self.total} eta {eta:4.0f}s {label[:50]:50s}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_bench(args, parser):
    if args.compare:
        return cmd_compare(args, parser)
    if args.max_seconds <= 0:
        parser.error("argument --max-seconds: expected a positive number")
    if args.threads:
        set_num_threads(args.threads)
    grid = dict(bench.FULL_GRID if args.full else bench.QUICK_GRID)
    for k, v in (("cells", args.cells), ("hidden", args.hidden), ("batch", args.batch),
                 ("seq_len", args.seq_len), ("modes", args.modes)):
        if v:
            grid[k] = tuple(v)
    available, why = bench.available_targets()
    targets = args.backends or available
    missing = [t for t in targets if t not in available]
    if missing:
        parser.error("argument --backends: not available here: " +
                     "; ".join(f"{t} ({why.get(t, 'unknown')})" for t in missing))
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        parser.error(f"argument --out: cannot create {args.out!r} ({exc.strerror})")
    cases = bench.grid_cases(targets=targets, **grid)
    peak = bench.matmul_peak_gflops()
    print(f"fastrnn bench: {len(cases)} points, backends {', '.join(targets)}, "
          f"{get_num_threads()} threads, numpy float32 matmul peak {peak:.0f} GFLOP/s", flush=True)
    progress = Progress(len(cases), not args.no_progress)
    rows = []
    for i, case in enumerate(cases):
        if i and cases[i - 1].backend != case.backend:
            time.sleep(bench.SETTLE_SECONDS)
        run = bench.make_runner(case)
        times = bench.measure(run, repeats=args.repeats, max_seconds=args.max_seconds)
        rows.append(bench.summarize(case, times, peak))
        progress.step(f"{case.cell} {case.mode} H={case.hidden} B={case.batch} T={case.seq_len} {case.backend}")
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
    return cmd_bench(args, parser)


if __name__ == "__main__":
    sys.exit(main())
