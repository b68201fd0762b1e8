"""The CPU-backend issue's benchmark: fastrnn cpu against torch CPU in one run.

    python benchmarks/cpu_vs_torch.py [--threads N] [--out benchmarks/results/cpu-vs-torch.json] [--smoke]

Grid: cell {rnn_tanh, lstm, gru} x H {128, 512} x B {1, 32} x T {32, 256} x
{inference, training}; torch gets torch.set_num_threads equal to fastrnn's. Prints the
tokens/s table with ratios and the three targets: ratio >= 1.0 everywhere, geometric mean
>= 2.0 over B = 1, and B = 32, H = 512 training at >= 85% of numpy's float32 matmul GFLOP/s.
"""
import argparse
import math
import os

from fastrnn import bench, report, set_num_threads
from fastrnn.progress import Progress
from fastrnn.threads import get_num_threads


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu-vs-torch.json"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one timed call a point: runs end to "
                   "end in seconds, measures nothing (CI)")
    args = p.parse_args(argv)
    if args.threads:
        set_num_threads(args.threads)
    if args.smoke:
        args.repeats = 1
    sizes = ((8,), (1, 3), (1, 4)) if args.smoke else ((128, 512), (1, 32), (32, 256))
    cases = bench.grid_cases(("rnn_tanh", "lstm", "gru"), *sizes, bench.MODES, ("cpu", "torch-cpu"))
    peak = bench.matmul_peak_gflops()
    progress = Progress(len(cases) // 2)
    # the two backends of a point take turns call by call: this shared 2-core machine drifts
    # by up to 2x over minutes, so a ratio is fair only between interleaved measurements
    rows = bench.run_paired(cases, peak, repeats=args.repeats, max_seconds=0.0 if args.smoke else 4.0,
                            on_step=lambda c: progress.step(f"{c.cell} {c.mode} H={c.hidden} B={c.batch} T={c.seq_len}"))
    progress.close()
    bench.add_ratios(rows, peers=("torch-cpu",))
    ours = [r for r in rows if r["backend"] == "cpu"]
    headers = ["cell", "mode", "H", "B", "T", "fastrnn tok/s", "torch tok/s", "ratio", "fastrnn GFLOP/s"]
    body = []
    for r in ours:
        torch_tps = r["tokens_per_s"] / r["speedup_vs_torch-cpu"]
        body.append([r["cell"], r["mode"], str(r["hidden"]), str(r["batch"]), str(r["seq_len"]),
                     f"{r['tokens_per_s']:,.0f}", f"{torch_tps:,.0f}", f"{r['speedup_vs_torch-cpu']:.2f}",
                     f"{r['gflops']:.0f}"])
    print(report.render_table(headers, body))
    ratios = [r["speedup_vs_torch-cpu"] for r in ours]
    b1 = [r["speedup_vs_torch-cpu"] for r in ours if r["batch"] == 1]
    big = [r for r in ours if r["batch"] == 32 and r["hidden"] == 512 and r["mode"] == "training"]
    gmean = math.exp(sum(map(math.log, b1)) / len(b1))
    print(f"\nthreads {get_num_threads()}, numpy float32 matmul {peak:.0f} GFLOP/s")
    print(f"min ratio {min(ratios):.2f} (target >= 1.0); geometric mean at B=1 {gmean:.2f} (target >= 2.0)")
    for r in big:
        print(f"B=32 H=512 training {r['cell']} T={r['seq_len']}: {r['gflops']:.0f} GFLOP/s = "
              f"{100 * r['peak_fraction']:.0f}% of numpy's matmul (target >= 85%)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    report.write_json(args.out, bench.machine_info(), dict(grid="cpu-vs-torch", repeats=args.repeats, smoke=args.smoke),
                      peak, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
