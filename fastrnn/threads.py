"""Thread count for the native kernels: OMP_NUM_THREADS at start, set_num_threads() after."""
import os

_num_threads = None


def _default():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    # The OpenMP runtime's own default: the CPUs this process could use when the runtime
    # started. Not os.sched_getaffinity(0) once the extension is loaded: under
    # OMP_PROC_BIND the runtime pins the calling thread to one CPU as it starts, after
    # which that reports a single CPU (the kernels then ran on one thread, 2x slower).
    try:
        from .backends import cpu
        if cpu.lib is not None:
            return cpu.omp_max_threads()
    except ImportError:
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def get_num_threads():
    """Threads each native kernel call uses."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default()
    return _num_threads


def set_num_threads(n):
    """Set the threads each native kernel call uses (n >= 1)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    _num_threads = n
