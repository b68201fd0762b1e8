"""Benchmark engine shared by `fastrnn bench` and the pytest-benchmark suite (benchmarks/).

A case is one (cell, hidden size, batch, sequence length, mode, backend) point. Modes:
'inference' (forward, no workspace) and 'training' (forward + backward). Peers are
measured in the same run: 'torch-cpu' (threads set equal to fastrnn's) and, on a GPU,
'torch-cudnn'. Throughput is tokens/s = T * B / median time.
"""
from dataclasses import asdict, dataclass
import os
import platform
import statistics
import time

import numpy as np

from . import backends
from .cells import get_cell
from .threads import get_num_threads

FASTRNN_BACKENDS = ("reference", "cpu", "cuda")
PEERS = ("torch-cpu", "torch-cudnn")
MODES = ("inference", "training")
# precision='bfloat16': fastrnn's cpu kernels and torch's CPU modules in bfloat16, inference
# and training. Asked for by name (--backends), not in the default set.
BF16_TARGETS = ("cpu-bf16", "torch-cpu-bf16")

# T = 1 is a decoding step (inference of one token a call), where the per-call costs show
QUICK_GRID = dict(cells=("lstm", "gru", "rnn_tanh"), hidden=(256,), batch=(1, 32),
                  seq_len=(1, 16, 64, 256), modes=MODES)
FULL_GRID = dict(cells=("lstm", "gru", "rnn_tanh"), hidden=(256, 512), batch=(1, 32),
                 seq_len=(1,) + tuple(2 ** k for k in range(4, 13)), modes=MODES)
# --memory: a process a point and backend (fastrnn/memory.py), so fewer points
MEMORY_GRID = dict(QUICK_GRID, seq_len=(64, 256))
MEMORY_FULL_GRID = dict(FULL_GRID, seq_len=(16, 64, 256, 1024))


@dataclass(frozen=True)
class Case:
    cell: str
    hidden: int
    batch: int
    seq_len: int
    mode: str
    backend: str
    input_size: int = 0  # 0: same as hidden

    @property
    def inputs(self):
        return self.input_size or self.hidden

    def flops(self):
        """Matrix-product FLOPs of one iteration: forward 2*T*B*G*H*(I+H); backward twice that."""
        G = get_cell(self.cell).gates
        fwd = 2.0 * self.seq_len * self.batch * G * self.hidden * (self.inputs + self.hidden)
        return fwd * (3 if self.mode == "training" else 1)


def available_targets():
    """Backends and peers that can run here, with the reason for each one that cannot."""
    ok, why = [], {}
    for name in FASTRNN_BACKENDS:
        reason = backends.why_unavailable(name)
        if name == "cuda" and not reason and os.environ.get("NUMBA_ENABLE_CUDASIM"):
            reason = "Numba CUDA simulator (correct but far too slow to time)"
        (why.__setitem__(name, reason) if reason else ok.append(name))
    try:
        import torch
        ok.append("torch-cpu")
        if torch.cuda.is_available() and torch.backends.cudnn.is_available():
            ok.append("torch-cudnn")
        else:
            why["torch-cudnn"] = "no CUDA device for torch"
    except ImportError:
        why["torch-cpu"] = why["torch-cudnn"] = "torch not installed (pip install 'fastrnn[torch]')"
    reason = why.get("cpu") or backends.get("cpu").bf16_unavailable_reason()
    (why.__setitem__("cpu-bf16", reason) if reason else ok.append("cpu-bf16"))
    if "torch-cpu" in ok:
        ok.append("torch-cpu-bf16")
    else:
        why["torch-cpu-bf16"] = why["torch-cpu"]
    return ok, why


def default_targets(available):
    """What `fastrnn bench` measures unless told: every available target but the bfloat16 ones."""
    return [t for t in available if t not in BF16_TARGETS]


def _fastrnn_runner(case, rng):
    from .layers import GRU, LSTM, RNN
    H, I = case.hidden, case.inputs
    kw = dict(backend="cpu", precision="bfloat16") if case.backend == "cpu-bf16" else dict(backend=case.backend)
    if case.cell.startswith("rnn_"):
        m = RNN(I, H, nonlinearity=case.cell[4:], seed=0, **kw)
    else:
        m = {"lstm": LSTM, "gru": GRU}[case.cell](I, H, seed=0, **kw)
    x = rng.standard_normal((case.seq_len, case.batch, I)).astype(np.float32)
    g = rng.standard_normal((case.seq_len, case.batch, H)).astype(np.float32)
    sync = lambda: None
    if case.backend == "cuda":
        return _cuda_runner(case, m, x, g)
    if case.mode == "inference":
        m.eval()

        def run():
            m(x)
            sync()
    else:
        def run():
            m(x)
            m.backward(g)
            sync()
    return run


def _cuda_runner(case, m, x, g):
    """The cuda backend on device-resident data: the layer contract directly (the NumPy
    module API would copy to and from the device at every call)."""
    from numba import cuda
    from .backends import cuda as be
    w = [None if a is None else cuda.to_device(a) for a in m._layer_weights(0, 0)]
    x, g = cuda.to_device(x), cuda.to_device(g)
    h0 = cuda.to_device(np.zeros((case.batch, case.hidden), np.float32))
    c0 = h0 if case.cell == "lstm" else None
    train = case.mode != "inference"

    def run():
        out = be.forward_layer(case.cell, x, h0, c0, *w, train=train)
        if train:
            be.backward_layer(case.cell, out[3], g, None, None)
        cuda.synchronize()
    return run


def _torch_runner(case, rng):
    import torch
    dev = "cuda" if case.backend == "torch-cudnn" else "cpu"
    if dev == "cpu":
        torch.set_num_threads(get_num_threads())
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    H, I = case.hidden, case.inputs
    if case.cell.startswith("rnn_"):
        m = torch.nn.RNN(I, H, nonlinearity=case.cell[4:])
    else:
        m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[case.cell](I, H)
    dtype = torch.bfloat16 if case.backend == "torch-cpu-bf16" else torch.float32
    m = m.to(device=dev, dtype=dtype)
    x = torch.tensor(rng.standard_normal((case.seq_len, case.batch, I)), dtype=dtype, device=dev)
    g = torch.tensor(rng.standard_normal((case.seq_len, case.batch, H)), dtype=dtype, device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if case.mode == "inference":
        def run():
            with torch.inference_mode():
                m(x)
            sync()
    else:
        xr = x.clone().requires_grad_(True)

        def run():
            out, _ = m(xr)
            out.backward(g)
            sync()
    return run


def make_runner(case, seed=0):
    """A no-argument callable doing one iteration of `case` (inputs made once, here)."""
    rng = np.random.default_rng(seed)
    if case.backend in PEERS or case.backend == "torch-cpu-bf16":
        return _torch_runner(case, rng)
    return _fastrnn_runner(case, rng)


def measure(run, repeats=5, min_repeats=3, max_seconds=1.0, warmup=1, min_seconds=0.05, max_samples=1000):
    """Times of at least `repeats` calls after `warmup`, and more (up to `max_samples`) until
    `min_seconds` are spent: five 20 us calls were as noisy as the differences measured. Stops
    early (after `min_repeats`) once `max_seconds` are spent. A warm-up slower than
    max_seconds is used as the only sample."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        run()
    first = time.perf_counter() - t0
    if warmup and first / warmup > max_seconds:
        return [first / warmup]
    times, spent = [], 0.0
    while not (len(times) >= min_repeats and spent >= max_seconds) and \
            (len(times) < repeats or (spent < min_seconds and len(times) < max_samples)):
        t = time.perf_counter()
        run()
        dt = time.perf_counter() - t
        times.append(dt)
        spent += dt
    return times


def run_cases(cases, peak_gflops, repeats=5, min_repeats=3, max_seconds=1.0, on_step=None):
    """Measure every case in order (pausing SETTLE_SECONDS when the backend changes);
    returns the summarized rows. on_step(case) is called after each point."""
    rows = []
    for i, case in enumerate(cases):
        # also before the first: the caller's matmul_peak_gflops leaves OpenBLAS spinning
        if i == 0 or cases[i - 1].backend != case.backend:
            time.sleep(SETTLE_SECONDS)
        times = measure(make_runner(case), repeats=repeats, min_repeats=min_repeats, max_seconds=max_seconds)
        rows.append(summarize(case, times, peak_gflops))
        if on_step:
            on_step(case)
    return rows


def take_turns(runs, repeats=9, max_seconds=4.0, min_repeats=5, warmup=1):
    """Times of each of `runs`, called in turn (after `warmup` calls each) so that slow
    drift of a shared machine hits them alike: rounds until `repeats`, or, after
    `min_repeats`, once `max_seconds` are spent. One list of times per run."""
    for run in runs:
        for _ in range(warmup):
            run()
    times = [[] for _ in runs]
    spent = 0.0
    while len(times[0]) < repeats and (len(times[0]) < min_repeats or spent < max_seconds):
        for run, ts in zip(runs, times):
            t = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t)
            spent += ts[-1]
    return times


def run_paired(cases, peak_gflops, repeats=9, max_seconds=4.0, on_step=None):
    """Like run_cases, but the backends of each point take turns call by call (after one
    warm-up each), so slow drift of a shared machine hits both sides of a ratio alike.
    Returns one summarized row per case; on_step(case) is called after each point."""
    points = {}
    for case in cases:
        points.setdefault((case.cell, case.mode, case.hidden, case.batch, case.seq_len), []).append(case)
    rows = []
    time.sleep(SETTLE_SECONDS)   # after the caller's matmul_peak_gflops (see SETTLE_SECONDS)
    for group in points.values():
        times = take_turns([make_runner(c) for c in group], repeats=repeats, max_seconds=max_seconds)
        rows += [summarize(c, ts, peak_gflops) for c, ts in zip(group, times)]
        if on_step:
            on_step(group[0])
    return rows


def _spread(times, med):
    """How much the times vary, relative to their median: the interquartile range from 8
    samples on (hundreds of short calls always hold an outlier or two), else max - min."""
    if med <= 0:
        return 0.0
    if len(times) >= 8:
        q1, _, q3 = statistics.quantiles(times, n=4)
        return (q3 - q1) / med
    return (max(times) - min(times)) / med


def summarize(case, times, peak_gflops):
    med = statistics.median(times)
    tokens = case.seq_len * case.batch
    gflops = case.flops() / med / 1e9
    row = asdict(case)
    row.update(
        input_size=case.inputs, repeats=len(times), median_s=med, min_s=min(times), max_s=max(times),
        spread=_spread(times, med),
        tokens_per_s=tokens / med, ms_per_step=med / case.seq_len * 1e3,
        gflops=gflops, peak_fraction=gflops / peak_gflops if peak_gflops else None)
    return row


def matmul_peak_gflops(n=1536, repeats=3):
    """float32 matrix-product GFLOP/s numpy reaches here now: the roof quoted beside each row."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16") if f in flags]
    except OSError:
        pass
    return []


def gpu_name():
    try:
        from numba import cuda
        if cuda.is_available() and not os.environ.get("NUMBA_ENABLE_CUDASIM"):
            return cuda.get_current_device().name.decode() if isinstance(
                cuda.get_current_device().name, bytes) else str(cuda.get_current_device().name)
    except Exception:
        pass
    return None


def machine_info():
    import numpy
    from . import __version__
    info = dict(fastrnn=__version__, python=platform.python_version(), numpy=numpy.__version__,
                platform=platform.platform(), machine=platform.machine(), cpu_model=cpu_model(),
                cpu_features=cpu_features(), cpu_count=os.cpu_count(), threads=get_num_threads(),
                gpu=gpu_name(), torch=None, numba=None)
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import numba
        info["numba"] = numba.__version__
    except ImportError:
        pass
    if "cpu" in backends.available():
        from .backends import cpu
        info["cpu_isa"] = cpu.isa()
    return info


def grid_cases(cells, hidden, batch, seq_len, modes, targets):
    """Points grouped by backend inside each (cell, mode), so the pause that lets another
    library's thread pool go idle (see SETTLE_SECONDS) is paid only when the backend changes."""
    return [Case(c, h, b, t, m, be) for c in cells for m in modes for be in targets
            for h in hidden for b in batch for t in seq_len]


# numpy's OpenBLAS (used by the reference backend and matmul_peak_gflops) and torch keep
# their worker threads spinning for a while after a call; on a machine with few cores they
# steal time from the next backend measured (AMD EPYC, 2 cores: an LSTM step, B = 32, took
# 16 ms instead of 0.4 for ~90 ms after numpy's matmul, and the quick grid's first point
# read 2,000 tokens/s instead of 137,000). A short pause when the backend changes, and
# before the first point, lets them go to sleep.
SETTLE_SECONDS = 0.3


def add_ratios(rows, peers=("torch-cpu", "reference"), value="tokens_per_s", prefix="speedup_vs"):
    """Each row gets <prefix>_<peer>: its `value` over the peer's at the same point (tokens/s:
    a speedup; fastrnn.memory's peak bytes: memory_vs_torch-cpu), None without the peer or
    where the peer's is 0. A bfloat16 row's torch peer is torch in bfloat16 (same precision)."""
    key = lambda r: (r["cell"], r["mode"], r["hidden"], r["batch"], r["seq_len"])
    by = {(key(r), r["backend"]): r for r in rows}
    for r in rows:
        for p in peers:
            same = "torch-cpu-bf16" if p == "torch-cpu" and r["backend"] in BF16_TARGETS else p
            peer = by.get((key(r), same))
            r[f"{prefix}_{p}"] = (r[value] / peer[value]) if peer and peer[value] else None
    return rows
