"""Check the cuda backend on a real GPU and time it against torch's cuDNN path.

1. Correctness: every cell, forward and every gradient, against the NumPy reference in
   float64 (same float32 inputs), at full sizes (H up to 1024), ragged and reversed,
   for the local kernels (a block holds all of W_hh: RNN H <= 256, LSTM/GRU H <= 128),
   the persistent kernels (under both grid barriers, FASTRNN_CUDA_GRID_SYNC, and with
   the batch split over blocks, FASTRNN_CUDA_BATCH_BLOCKS), the one-launch-per-step
   fallback and the step-gemm path; and the LSTM with a projection ('lstmp', P = H/4).
2. Speed: forward (inference) and forward+backward (training, dx included) of one layer,
   float32, TF32 off, H in {256, 512, 1024}, B in {1, 8, 64, 256}, T in {32, 256, 1024},
   against torch.nn.LSTM/GRU/RNN on cuDNN in the same run.
Writes benchmarks/results/gpu-<device>.json (or --out) and prints a table.

    python benchmarks/gpu_check.py [--cells lstm,gru,rnn_tanh] [--quick] [--out FILE]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fastrnn.backends import cuda as fcuda          # noqa: E402
from fastrnn.backends import cuda_blas as blas                # noqa: E402
from fastrnn.backends import cuda_launch                   # noqa: E402
from fastrnn.backends import reference as ref      # noqa: E402
from fastrnn.cells import get_cell                 # noqa: E402
from numba import cuda                             # noqa: E402

TORCH_CELL = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.isfinite(a).all():
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def layer(cell, H):
    """(backend cell, P): 'lstmp' is an LSTM with a projection to P = H / 4 (proj_size)."""
    return ("lstm", max(1, H // 4)) if cell == "lstmp" else (cell, None)


def check_one(cell, T, B, I, H, reverse, ragged, rng):
    """Max relative error over y, h_T, c_T and every gradient (float32 cuda vs float64 ref)."""
    cell, P = layer(cell, H)
    G, S = get_cell(cell).gates, P or H   # S: the state's width
    f32 = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
    k = 1 / np.sqrt(H)
    x, w_ih, w_hh = f32(T, B, I), f32(G * H, I, scale=k), f32(G * H, S, scale=k)
    b_ih, b_hh, h0 = f32(G * H, scale=k), f32(G * H, scale=k), f32(B, S)
    c0 = f32(B, H) if cell == "lstm" else None
    dy, dh, dc = f32(T, B, S), f32(B, S), (f32(B, H) if cell == "lstm" else None)
    w_hr = f32(P, H, scale=k) if P else None
    lengths = rng.integers(0, T + 1, B) if ragged else None
    up = lambda a: None if a is None else a.astype(np.float64)
    r = ref.forward_layer(cell, up(x), up(h0), up(c0), up(w_ih), up(w_hh), up(b_ih), up(b_hh),
                          lengths=lengths, reverse=reverse, w_hr=up(w_hr))
    gr = ref.backward_layer(cell, r[3], up(dy), up(dh), up(dc))
    # fresh random inputs on every call; a NaN or inf anywhere in an output fails rel()
    dev = lambda a: None if a is None else cuda.to_device(a)
    c = fcuda.forward_layer(cell, *map(dev, (x, h0, c0, w_ih, w_hh, b_ih, b_hh)),
                            lengths=lengths, reverse=reverse, w_hr=dev(w_hr))
    gc = fcuda.backward_layer(cell, c[3], dev(dy), dev(dh), dev(dc))
    errs = {}
    for name_, a, b in zip(("y", "h_T", "c_T"), c[:3], r[:3]):
        if b is not None:
            errs[name_] = rel(a.copy_to_host(), b)
    for name_, a, b in zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr"), gc, gr):
        if b is not None:
            errs[name_] = rel(a.copy_to_host(), b)
    return errs


def local_shapes(cell):
    """Shapes the local kernels run at: the largest H that fits one SM (RNN 256, LSTM and
    GRU 128), 1, 8, 256 and 500 sequences (2 and 4 a block), an odd H with a ragged batch,
    and GRU's largest (160, one sequence a block)."""
    H = 256 if get_cell(cell).gates == 1 else 128
    extra = [(8, 100, 32, 160, True, True)] if cell == "gru" else []
    return [(32, 1, 64, H, False, True), (32, 8, 48, H, True, True), (12, 256, 64, H, True, True),
            (6, 500, 16, H, True, True),
            (10, 70, 33, 100, False, True)] + extra


def correctness(cells, rng, on_row=lambda rows: None):
    """One row a check; on_row(rows) after each (the caller saves them)."""
    rows = []
    shapes = [(16, 8, 64, 1024, False, True), (16, 8, 32, 1024, True, True),
              (12, 256, 64, 256, True, True), (24, 1, 128, 512, False, False),
              (10, 70, 33, 130, True, True)]
    # (label, persistent, step product, matmul, grid sync, batch blocks, shapes): each kernel
    # path with cuBLAS where CuPy is present, the per-step paths also with the Numba matmul
    # kernels, the persistent kernels with either grid barrier and with the batch split
    # over 4 batch blocks (FASTRNN_CUDA_BATCH_BLOCKS; H = 1024 then runs per step).
    # Batch blocks "auto": the plan's default (8 at B >= 64, unsplit below)
    # "local": the local kernels (cuda_local.py), the default where W_hh fits one SM; the
    # other paths force a step product setting, which turns them off
    paths = (("local", "1", None, "auto", "cg", "auto", None),
             ("persistent", "1", "0", "auto", "cg", "auto", shapes),
             ("pers-flag", "1", "0", "auto", "flag", "1", shapes),
             ("pers-bblocks", "1", "0", "auto", "cg", "4", shapes),
             ("per-step", "0", "0", "numba", "cg", "1", shapes[2:4]),
             ("step-gemm", "1", "1", "auto", "cg", "1", shapes[2:]),
             ("step-gemm", "1", "1", "numba", "cg", "1", shapes[2:4]))
    # the timings below run under the caller's settings of these
    saved_env = {k: os.environ.get(k) for k in (fcuda.GRID_SYNC_ENV, fcuda.BATCH_BLOCKS_ENV)}
    for label, persistent, step_gemm, matmul, sync, bblocks, sel in paths:
        os.environ[fcuda.PERSISTENT_ENV] = persistent
        if step_gemm is None:
            os.environ.pop(fcuda.STEP_GEMM_ENV, None)
        else:
            os.environ[fcuda.STEP_GEMM_ENV] = step_gemm
        os.environ["FASTRNN_CUDA_MATMUL"] = matmul
        os.environ[fcuda.GRID_SYNC_ENV] = sync
        if bblocks == "auto":
            os.environ.pop(fcuda.BATCH_BLOCKS_ENV, None)
        else:
            os.environ[fcuda.BATCH_BLOCKS_ENV] = bblocks
        for cell in cells:
            if cell == "lstmp" and label != "step-gemm":   # its one path: products and launches
                continue
            for T, B, I, H, rev, ragged in (sel or local_shapes(cell)):
                p = fcuda.plan(layer(cell, H)[0], H, B)
                errs = check_one(cell, T, B, I, H, rev, ragged, rng)
                worst = max(errs.values())
                if label == "local" and fcuda.last_path != {"forward": "local", "backward": "local"}:
                    errs["path"] = worst = float("inf")   # the local kernels did not run
                rows.append(dict(cell=cell, T=T, B=B, I=I, H=H, reverse=rev, ragged=ragged, path=label,
                                 grid_sync=sync, batch_blocks=p["nbb"],
                                 persistent=p["persistent"], cublas=blas.available(), max_rel_err=worst,
                                 errors=errs, ok=bool(worst < 1e-4)))
                on_row(rows)
                print(f"check {cell:8s} T={T:3d} B={B:3d} H={H:4d} rev={rev!s:5s} ragged={ragged!s:5s} "
                      f"{label:10s} cublas={blas.available()!s:5s} max rel err {worst:.2e} "
                      f"{'ok' if worst < 1e-4 else 'FAIL'}", flush=True)
    os.environ[fcuda.PERSISTENT_ENV] = "1"
    os.environ.pop(fcuda.STEP_GEMM_ENV)
    for k, v in saved_env.items():
        os.environ.pop(k)
        if v is not None:
            os.environ[k] = v
    os.environ["FASTRNN_CUDA_MATMUL"] = "auto"
    return rows


def timeit(fn, min_time=0.3, min_reps=3, max_reps=50):
    fn()
    fn()   # warm-up: compilation, allocation
    times, start = [], time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fastrnn_runner(cell, T, B, H, train, rng):
    cell, P = layer(cell, H)
    G, I, S = get_cell(cell).gates, H, P or H
    dev = lambda *s: cuda.to_device((rng.standard_normal(s) / np.sqrt(H)).astype(np.float32))
    x, w_ih, w_hh, b_ih, b_hh = dev(T, B, I), dev(G * H, I), dev(G * H, S), dev(G * H), dev(G * H)
    h0, c0 = dev(B, S), (dev(B, H) if cell == "lstm" else None)
    dy = dev(T, B, S)
    proj = {"w_hr": dev(P, H)} if P else {}

    def run():
        out = fcuda.forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=train, **proj)
        if train:
            fcuda.backward_layer(cell, out[3], dy, None, None)
        cuda.synchronize()
    return run


def torch_runner(cell, T, B, H, train):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn_") else {}
    cell, P = layer(cell, H)
    if P:
        kw["proj_size"] = P
    m = getattr(torch.nn, TORCH_CELL[cell])(H, H, **kw).cuda()
    x = torch.randn(T, B, H, device="cuda", requires_grad=train)
    g = torch.randn(T, B, P or H, device="cuda")

    def run():
        if train:
            out, _ = m(x)
            out.backward(g)
        else:
            with torch.inference_mode():
                m(x)
        torch.cuda.synchronize()
    return run


def timing(cells, Hs, Bs, Ts, rng, budget_s, stop_at=float("inf"), on_row=lambda rows: None):
    """The grid, point by point, until budget_s seconds have gone or the clock passes stop_at
    (time.perf_counter()); on_row(rows) after each point (the caller saves them: a device
    call that runs out of time keeps what was measured)."""
    rows, start = [], time.perf_counter()
    for cell in cells:
        for train in (False, True):
            for H in Hs:
                for B in Bs:
                    for T in Ts:
                        now = time.perf_counter()
                        if now - start > budget_s or now > stop_at:
                            print("timing budget reached; stopping the grid", flush=True)
                            return rows
                        p = fcuda.plan(layer(cell, H)[0], H, B, backward=False)
                        fcuda.last_path.clear()
                        t_f = timeit(fastrnn_runner(cell, T, B, H, train, rng))
                        t_t = timeit(torch_runner(cell, T, B, H, train))
                        row = dict(cell=cell, mode="train" if train else "inference", H=H, B=B, T=T,
                                   fastrnn_s=t_f, cudnn_s=t_t, ratio=t_t / t_f,
                                   fastrnn_tok_s=T * B / t_f, cudnn_tok_s=T * B / t_t,
                                   persistent=p["persistent"], blocks=p["blocks"], S=p["S"],
                                   BT=p["BT"], KC=p["KC"], batch_blocks=p["nbb"], step_gemm=p["step_gemm"],
                                   local=p["local"], path=dict(fcuda.last_path))
                        rows.append(row)
                        on_row(rows)
                        print(f"{cell:8s} {row['mode']:9s} H={H:4d} B={B:3d} T={T:4d} fastrnn "
                              f"{t_f * 1e3:9.3f} ms  cudnn {t_t * 1e3:9.3f} ms  ratio {row['ratio']:5.2f} "
                              f"{row['path']}",
                              flush=True)
    return rows


# The targets, as (name, rows they cover, lowest ratio they ask for).
TARGETS = (
    ("forward >= 1.0 at B <= 8, H in {256, 512}",
     lambda r: r["mode"] == "inference" and r["B"] <= 8 and r["H"] in (256, 512), 1.0),
    ("forward+backward >= 0.7 at B <= 8",
     lambda r: r["mode"] == "train" and r["B"] <= 8, 0.7),
    ("within 3x of cuDNN at B = 256", lambda r: r["B"] == 256, 1 / 3),
)


def target_summary(rows):
    """For each target: how many timed points meet it, of how many, and the worst ratio."""
    out = []
    for name_, covers, floor in TARGETS:
        sel = [r for r in rows if covers(r)]
        out.append(dict(target=name_, met=sum(r["ratio"] >= floor for r in sel), points=len(sel),
                        worst=min((r["ratio"] for r in sel), default=None)))
    return out


def kernel_resources():
    """Registers, shared and local (spill) memory of every compiled kernel."""
    out = []
    def add(label, k):
        try:
            out.append(dict(kernel=label, signature=str(k.argument_types)[:160],
                            registers=k.regs_per_thread, static_shared_bytes=k.shared_mem_per_block,
                            local_bytes_per_thread=k.local_mem_per_thread))
        except Exception as exc:  # resource query not supported by this numba-cuda
            out.append(dict(kernel=label, error=str(exc)))
    for label, k in cuda_launch.compiled_kernels():
        add(label, k)
    return out


def save(path, res):
    """Write res as JSON through a temporary file, so a kill mid-write leaves the last copy."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    started = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru,rnn_tanh,lstmp",
                    help="lstmp: an LSTM with a projection to H / 4 (checked; timed only when named "
                         "in --timing-cells)")
    ap.add_argument("--quick", action="store_true", help="T in {32, 256} only")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--timing-cells", default=None, help="cells to time, in this order (default: --cells)")
    ap.add_argument("--budget", type=float, default=420, help="seconds for the timing grid")
    ap.add_argument("--deadline", type=float, default=float("inf"),
                    help="seconds from the start of the script (checks and compilation included) "
                         "after which no new point is timed")
    ap.add_argument("--hs", default="256,512,1024", help="hidden sizes to time")
    ap.add_argument("--bs", default="1,8,64,256", help="batch sizes to time")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if fcuda.unavailable_reason() or fcuda.SIMULATOR:
        print(f"no real GPU: {fcuda.unavailable_reason() or 'simulator'}")
        return 2
    cells = args.cells.split(",")
    rng = np.random.default_rng(0)
    dev = fcuda._device_limits()[2]
    import torch
    import numba
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   "gpu-" + dev.replace(" ", "-") + ".json")
    res = dict(device=dev, describe=fcuda.describe(), date=time.strftime("%Y-%m-%d"),
               versions=dict(numba=numba.__version__, torch=torch.__version__,
                             cudnn=torch.backends.cudnn.version(), python=platform.python_version()),
               tf32=False, matmul="cuBLAS via CuPy" if blas.available() else "Numba tiled kernel",
               complete=False, checks=[], all_checks_ok=None, timing=[], targets=[], kernels=[])

    def on_check(rows):
        res.update(checks=rows, all_checks_ok=all(c["ok"] for c in rows))
        save(out, res)

    def on_row(rows):
        res.update(timing=rows, targets=target_summary(rows))
        save(out, res)
    # saved after every check and every timed point ("complete": false until the end), so a
    # device call that runs out of time still brings back what it measured
    on_check([] if args.skip_check else correctness(cells, rng, on_check))
    Ts = (32, 256) if args.quick else (32, 256, 1024)
    tcells = args.timing_cells.split(",") if args.timing_cells else [c for c in cells if c != "lstmp"]
    ints = lambda text: tuple(int(v) for v in text.split(","))
    rows = timing(tcells, ints(args.hs), ints(args.bs), Ts, rng, args.budget,
                  stop_at=started + args.deadline, on_row=on_row)
    res.update(timing=rows, targets=target_summary(rows), kernels=kernel_resources(), complete=True)
    save(out, res)
    print(f"\nwrote {out}")
    print(f"{'cell':8s} {'mode':9s} {'H':>5s} {'B':>4s} {'T':>5s} {'fastrnn ms':>11s} {'cudnn ms':>10s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['cell']:8s} {r['mode']:9s} {r['H']:5d} {r['B']:4d} {r['T']:5d} "
              f"{r['fastrnn_s'] * 1e3:11.3f} {r['cudnn_s'] * 1e3:10.3f} {r['ratio']:6.2f}")
    for t in res["targets"]:
        worst = "-" if t["worst"] is None else f"{t['worst']:.2f}"
        print(f"target {t['target']}: {t['met']} of {t['points']} points, worst ratio {worst}")
    print("checks:", "all ok" if res["all_checks_ok"] else "FAILURES")
    return 0 if res["all_checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
