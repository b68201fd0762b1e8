"""Thread count for the native kernels: OMP_NUM_THREADS at start, set_num_threads() after.

A process forked after OpenMP threads started runs the kernels on one thread: GNU OpenMP
does not rebuild its thread pool in a forked child, and a parallel region there waits for
threads that do not exist (a 2-thread forward in a multiprocessing 'fork' worker hung
forever). torch shares the same libgomp, so its parallel work counts too.
"""
import os
import sys
import warnings

_num_threads = None
_pool_may_exist = False   # a native call may have started OpenMP threads in this process
_fork_unsafe = False      # forked from a process where they may have: one thread only
_child_unsafe = False     # set in the parent as it forks: the child will be _fork_unsafe


def _cpus():
    """The CPUs the OpenMP runtime counts: those this process could use when the runtime
    started. Not os.sched_getaffinity(0) once the extension is loaded: under OMP_PROC_BIND
    the runtime pins the calling thread to one CPU as it starts, after which that reports
    a single CPU (the kernels then ran on one thread, 2x slower). Nor omp_get_max_threads:
    torch.set_num_threads(n) sets that for the shared runtime."""
    try:
        from .backends import cpu
        if cpu.lib is not None:
            return cpu.omp_num_procs()
    except ImportError:
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def max_threads():
    """The most threads a kernel call may use: 8 a CPU (at least 64). More only slows a
    compute kernel, and GNU OpenMP asked for a team far past what it can start kills the
    process (100,000 threads: a segmentation fault inside GOMP_parallel)."""
    return max(64, 8 * _cpus())


def _default():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        n, cap = int(env), max_threads()
        if n > cap:
            warnings.warn(f"OMP_NUM_THREADS={n} is more than fastrnn's {cap} (8 threads a CPU, at "
                          f"least 64): its kernels use {cap}", RuntimeWarning, stacklevel=3)
            n = cap
        return n
    return _cpus()


def get_num_threads():
    """Threads each native kernel call uses."""
    global _num_threads, _pool_may_exist
    if _num_threads is None:
        _num_threads = _default()
    if _num_threads > 1:
        _pool_may_exist = True
    return _num_threads


def set_num_threads(n):
    """Set the threads each native kernel call uses (n >= 1)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    if n > max_threads():
        raise ValueError(f"n: expected at most {max_threads()} threads (8 a CPU, at least 64; "
                         f"{_cpus()} CPUs here), got {n}")
    if n > 1 and _fork_unsafe:
        raise RuntimeError(
            f"n: this process was forked after OpenMP threads had started, and GNU OpenMP "
            f"cannot start threads in such a child (a {n}-thread kernel would hang): it runs "
            "on 1 thread. For more, start workers with multiprocessing's 'spawn' or "
            "'forkserver' method.")
    _num_threads = n


def _fork_child_inherits_pool():
    """In the parent, as it forks: may the child inherit OpenMP's stale thread pool?"""
    return _fork_unsafe or _pool_may_exist or "torch" in sys.modules


def _before_fork():
    global _child_unsafe
    _child_unsafe = _fork_child_inherits_pool()


def _after_fork_in_child():
    global _num_threads, _fork_unsafe
    if _child_unsafe:
        _fork_unsafe, _num_threads = True, 1


if hasattr(os, "register_at_fork"):   # POSIX
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
