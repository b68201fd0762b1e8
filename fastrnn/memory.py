"""Peak memory of one benchmark point (`fastrnn bench --memory`), each in a fresh process.

What a point needs beyond its model and inputs: the process's resident memory (RSS) at its
highest during three calls, less the RSS once the model and inputs are made. Before that
baseline a tiny call of the same backend, cell and mode runs twice, so that what any call
loads once (code pages, thread pools, torch's kernel libraries) is not counted. Counted:
outputs, training workspaces, packed weight copies, gradients (fastrnn's are allocated
zero and only take pages when first written; torch allocates them at the first backward),
and what an allocator keeps after a call (fastrnn's workspace pool, glibc's free lists;
the baseline is taken after glibc has handed its free memory back, _trim).
`held` is what is still resident after the third call.

Linux only: the high-water mark is /proc/self/status's VmHWM, reset through
/proc/self/clear_refs (Linux 4.0+) after the baseline. CPU backends only: the cuda
backend and cuDNN hold device memory, which RSS does not see.
"""
import ctypes
import gc
import json
import os
import subprocess
import sys

CALLS = 3
CPU_TARGETS = ("cpu", "cpu-bf16", "reference", "torch-cpu", "torch-cpu-bf16")


def _status():
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def unavailable_reason():
    """Why peak memory cannot be measured here, or None."""
    if not sys.platform.startswith("linux"):
        return f"needs Linux's /proc (this is {sys.platform})"
    try:
        _status()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # resets the peak RSS
    except (OSError, ValueError, KeyError) as exc:
        return f"cannot reset the peak RSS through /proc/self/clear_refs ({exc})"
    return None


def _trim():
    """Hand the C heap's free memory back to the system (glibc's malloc_trim). Without it,
    memory freed while the inputs were made (numpy's float64 temporaries) stays resident
    and the point's outputs land in it uncounted: an 8 MB output read as 0.8 MB."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):   # not glibc: no trim, and a baseline that may be high
        pass


def probe(case):
    """{peak_bytes, held_bytes, baseline_bytes} of `case` (a bench.Case), in this process."""
    from dataclasses import replace

    from . import bench
    tiny = bench.make_runner(replace(case, hidden=8, batch=1, seq_len=2, input_size=0))
    for _ in range(2):
        tiny()
    run = bench.make_runner(case)
    del tiny
    gc.collect()
    _trim()
    base = _status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(CALLS):
        run()
    gc.collect()
    now = _status()
    return dict(peak_bytes=max(0, now["VmHWM"] - base), held_bytes=max(0, now["VmRSS"] - base),
                baseline_bytes=base)


def measure(case, threads, timeout=600):
    """probe(case) in a fresh Python process running `threads` threads; raises
    RuntimeError with the child's last words if it fails."""
    from dataclasses import asdict
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.run([sys.executable, "-m", "fastrnn.memory", json.dumps(asdict(case))],
                       capture_output=True, text=True, env=env, timeout=timeout)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"memory probe of {case} failed (exit {p.returncode}): " + " | ".join(tail))
    return json.loads(lines[-1])


RATIO = "memory_vs_torch-cpu"


def add_ratios(rows):
    """Each row gets memory_vs_torch-cpu: its peak over torch's at the same point (torch in
    bfloat16 for a bfloat16 row); lower is less memory."""
    from .bench import add_ratios
    return add_ratios(rows, peers=("torch-cpu",), value="peak_bytes", prefix="memory_vs")


def summary(rows):
    """A line per fastrnn backend and mode: the range of its peak over torch's, at B = 1
    and at larger batches."""
    lines = []
    for be in dict.fromkeys(r["backend"] for r in rows if not r["backend"].startswith("torch")):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            parts = []
            for label, pick in (("B = 1", lambda b: b == 1), ("B > 1", lambda b: b > 1)):
                ratios = [r[RATIO] for r in rows if r["backend"] == be and r["mode"] == mode
                          and pick(r["batch"]) and r.get(RATIO) is not None]
                if ratios:
                    parts.append(f"{label} {min(ratios):.2f}-{max(ratios):.2f}x")
            if parts:
                lines.append(f"* {be} {mode}: peak memory / torch's {', '.join(parts)}")
    return "\n".join(lines)


def _main(argv):
    from . import bench
    case = bench.Case(**json.loads(argv[0]))
    print(json.dumps(probe(case)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
