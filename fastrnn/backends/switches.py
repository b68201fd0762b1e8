"""The cuda backend's environment switches, read on every call (tests and benchmarks flip
them in-process), through the environment's own dict where Python keeps one.

os.environ.get costs ~1 us (encoding the key, the Mapping machinery); a short layer call
reads a dozen switches (plan key, launch mode, buffer pool) and a training call ~40, a
tenth of its host time (benchmarks/gpu_host_mock.py). os.environ._data is the dict behind
os.environ on POSIX: the same values, updated by the same assignments, at ~25 ns a read.
Elsewhere (or if a Python lacks it) os.environ.get is used.
"""
import os

_data = getattr(os.environ, "_data", None)
_FAST = os.name == "posix" and isinstance(_data, dict)
_keys = {}


def get(name, default=None):
    """os.environ.get(name, default)."""
    if not _FAST:
        return os.environ.get(name, default)
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = os.fsencode(name)
    v = _data.get(key)
    return default if v is None else os.fsdecode(v)
