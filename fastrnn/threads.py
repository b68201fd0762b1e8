"""Thread count for the native kernels: OMP_NUM_THREADS at start, set_num_threads() after."""
import os

_num_threads = None


def _default():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
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
