"""Kernel launches straight through the CUDA driver, for the cuda backend.

numba-cuda's dispatcher spends tens of microseconds of Python per launch (typing every
argument, converting each to a ctypes value, building a launch config). A layer call
makes about ten launches, which at short sequences costs more than the kernels run.
Here each kernel is compiled once per argument signature (numba's `specialize`), and a
launch writes the flattened argument values into a fixed buffer and makes one
cuLaunchKernel (or cuLaunchCooperativeKernel) call.

Numba's kernel ABI (numba-cuda's _Kernel._prepare_args): an array argument is 5 + 2*ndim
parameters (meminfo, parent, nitems, itemsize, data pointer, shape..., strides in
bytes...), a scalar one parameter. Every parameter gets an 8-byte slot; the driver copies
each parameter's own size from its slot, and x86 and the GPU are little-endian, so a
narrower value (bool, float32, int32) sits in the slot's low bytes.

Under the simulator, or with FASTRNN_CUDA_RAW_LAUNCH=0, launches go through the dispatcher.
"""
import os
import struct

import numpy as np
from numba import cuda, types

from . import switches

SIMULATOR = bool(os.environ.get("NUMBA_ENABLE_CUDASIM"))
if SIMULATOR:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as DeviceNDArray
    from . import cuda_sim
    cuda_sim.atomic_shared_arrays()
else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray


class NotCoResident(RuntimeError):
    """A cooperative grid larger than the device can hold at once."""


class LaunchRefused(RuntimeError):
    """The driver would not launch the kernel with these resources (threads, registers or
    shared memory a block): nothing ran, and a kernel that asks for less may."""


# CUDA_ERROR_INVALID_VALUE (a block or shared memory size over a limit) and
# CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (registers x threads over the SM's)
_REFUSALS = (1, 701)


def _dispatch(kern, grid, block, shared, args):
    """kern[grid, block, 0, shared](*args) through numba's dispatcher."""
    if not SIMULATOR:
        kern[grid, block, 0, shared](*args)
        return
    with cuda_sim.launching():
        kern[grid, block, 0, shared](*args)


def raw_enabled():
    return not SIMULATOR and switches.get("FASTRNN_CUDA_RAW_LAUNCH", "1") != "0"


def launch(kern, grid, block, args, shared=0, cooperative=False):
    """kern[grid, block, 0, shared](*args) on the default stream, every array argument
    passed flat (the kernels index flat arrays; an array must be C-contiguous).
    cooperative=True checks first that the whole grid can be resident (NotCoResident)."""
    if not raw_enabled():
        args = tuple(_flat(a) for a in args)
        if cooperative and not SIMULATOR:
            _compiled(kern, args).check_coresident(grid, block, shared)
        _dispatch(kern, grid, block, shared, args)
        return
    _compiled(kern, args).launch(grid, block, args, shared, cooperative)


def _flat(a):
    if isinstance(a, DeviceNDArray) and a.ndim != 1:
        if not a.is_c_contiguous():
            raise ValueError("cuda_launch: array arguments must be C-contiguous")
        return a.reshape(a.size)
    return a


def prepared(kern, grid, block, args, shared=0, vary=0):
    """A launch of kern with every argument fixed except args[vary], an integer given per
    call: prepared(...)(s) launches kern(*args) with args[vary] = s. vary may be a tuple of
    indices: prepared(...)(s, t) sets each. The per-step loops launch one kernel T times;
    this writes the parameter buffer once."""
    vary = (vary,) if isinstance(vary, int) else tuple(vary)
    if not raw_enabled():
        args = [_flat(a) for a in args]

        def call(*v):
            for i, x in zip(vary, v):
                args[i] = x
            _dispatch(kern, grid, block, shared, args)
        return call
    return _compiled(kern, args).prepared(grid, block, args, shared, vary)


_compiled_cache = {}


def _signature(args):
    """A cheap key for the argument types: the dtype of arrays (all passed flat), the
    Python type of scalars (numba types a Python int as int64, a float as float64)."""
    return tuple(a.dtype.char if isinstance(a, DeviceNDArray) else type(a) for a in args)


def _compiled(kern, args):
    key = (id(kern), _signature(args))
    k = _compiled_cache.get(key)
    if k is None:
        k = _compiled_cache[key] = RawKernel(kern.specialize(*(_flat(a) for a in args)))
    return k


def compiled_kernels():
    """(python function name, compiled kernel) of every kernel launched so far."""
    return [(rk.name, rk.overload) for rk in _compiled_cache.values()]


class RawKernel:
    """One compiled overload with its parameter buffer."""

    def __init__(self, specialized):
        self.overload = next(iter(specialized.overloads.values()))
        self.name = specialized.py_func.__name__
        self.cooperative = bool(getattr(self.overload, "cooperative", False))
        self._contexts = {}   # context handle -> function handle and its launch limits
        # per argument, how values() writes it: 0 an array (7 parameters), 1 an integer,
        # else the function that gives a float's bits (kinds inlined: a call per argument
        # was most of a launch's host time)
        kinds = []
        for t in self.overload.argument_types:
            if isinstance(t, types.Array):
                assert t.ndim == 1, "arrays are passed flat"
                kinds.append(0)
            elif isinstance(t, (types.Integer, types.Boolean)):
                kinds.append(1)
            elif t == types.float32:
                kinds.append(_f32_bits)
            elif t == types.float64:
                kinds.append(_f64_bits)
            else:
                raise TypeError(f"cuda_launch: unsupported kernel argument type {t}")
        self._kinds = kinds
        n = sum(7 if k == 0 else 1 for k in kinds)
        self._pack = struct.Struct(f"<{n}q").pack_into   # the values into _vals, in C
        self._vals = np.zeros(max(n, 1), np.int64)
        base = self._vals.ctypes.data
        self._ptrs = np.array([base + 8 * i for i in range(max(n, 1))], np.uint64)
        self._ptrs_addr = self._ptrs.ctypes.data

    def values(self, args):
        """The kernel parameters of args, in order (numba's flattened ABI)."""
        vals = []
        add, ext = vals.append, vals.extend
        for kind, a in zip(self._kinds, args):
            if kind == 0:
                ext(_array_values(a))
            elif kind == 1:
                add(int(a))
            else:
                ext(kind(a))
        return vals

    def _state(self):
        """The function handle and launch limits in the current context: a process may use
        several devices, and each context loads its own copy of the module."""
        ctx = current_context()
        st = self._contexts.get(ctx)
        if st is None:
            from cuda.bindings import driver as drv
            kernel = self.overload._codelibrary.get_cufunc().handle   # numba keeps a CUkernel
            fn = kernel
            if isinstance(kernel, drv.CUkernel):
                err, fn = drv.cuKernelGetFunction(kernel)
                _check(err, "cuKernelGetFunction")
            st = self._contexts[ctx] = dict(fn=fn, kernel=kernel, shared=48 * 1024, most={})
        return st

    def allow_shared(self, nbytes, st=None):
        """Raise the kernel's dynamic shared memory limit (needed above 48 KiB), on the
        library kernel (what numba's dispatcher launches) and on our function handle."""
        st = st or self._state()
        if nbytes <= st["shared"]:
            return
        from cuda.bindings import driver as drv
        attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if isinstance(st["kernel"], drv.CUkernel):
            err = drv.cuKernelSetAttribute(attr, nbytes, st["kernel"],
                                           cuda.get_current_device().id)[0]
            _check(err, f"allowing {nbytes} bytes of shared memory", refusable=True)
        err = drv.cuFuncSetAttribute(st["fn"], attr, nbytes)[0]
        _check(err, f"allowing {nbytes} bytes of shared memory", refusable=True)
        st["shared"] = nbytes

    def check_coresident(self, grid, block, shared, st=None):
        st = st or self._state()
        self.allow_shared(shared, st)
        most = st["most"].get((block, shared))
        if most is None:
            most = st["most"][(block, shared)] = self.overload.max_cooperative_grid_blocks(block, shared)
        if grid > most:
            raise NotCoResident(f"{self.name}: {grid} blocks > {most} co-resident")

    def prepared(self, grid, block, args, shared, vary):
        from cuda.bindings import driver as drv
        st = self._state()
        self.allow_shared(shared, st)
        vals = np.array(self.values(args), np.int64)
        # each varying argument's slot: the parameters before it
        slots = [len(self.values(args[:i])) for i in vary]
        assert all(self._kinds[i] == 1 for i in vary), "the varying arguments must be integers"
        # (vals.ctypes builds a ctypes helper object: once, not once a parameter, which at the
        # 50-odd parameters of a gates kernel was most of a prepared launch's host time)
        ptrs = vals.ctypes.data + 8 * np.arange(len(vals), dtype=np.uint64)
        fn, addr = st["fn"], ptrs.ctypes.data
        gx, gy = (grid, 1) if isinstance(grid, int) else grid

        def call(*v):
            for slot, x in zip(slots, v):
                vals[slot] = x
            _check(drv.cuLaunchKernel(fn, gx, gy, 1, block, 1, 1, shared, 0, addr, 0)[0],
                   f"launching {self.name}", refusable=True)
        call.buffers = (vals, ptrs)   # the driver reads these at every launch: keep them
        return call

    def launch(self, grid, block, args, shared, cooperative):
        from cuda.bindings import driver as drv
        st = self._state()
        if cooperative:
            self.check_coresident(grid, block, shared, st)
        else:
            self.allow_shared(shared, st)
        self._pack(self._vals, 0, *self.values(args))
        gx, gy = (grid, 1) if isinstance(grid, int) else grid
        if cooperative or self.cooperative:   # flag_sync's kernels do not use numba's cg
            err = drv.cuLaunchCooperativeKernel(st["fn"], gx, gy, 1, block, 1, 1, shared,
                                                0, self._ptrs_addr)[0]
        else:
            err = drv.cuLaunchKernel(st["fn"], gx, gy, 1, block, 1, 1, shared, 0,
                                     self._ptrs_addr, 0)[0]
        _check(err, f"launching {self.name}", refusable=True)


def current_context():
    """The current CUDA context as an int (0 under the simulator): caches of handles and
    device buffers are kept per context."""
    if SIMULATOR:
        return 0
    from cuda.bindings import driver as drv
    err, ctx = drv.cuCtxGetCurrent()
    _check(err, "cuCtxGetCurrent")
    return int(ctx)


def _array_values(a):
    """The 7 parameters of a flat array: meminfo, parent, nitems, itemsize, data, shape, stride.
    Kept on the array (its buffer, size and layout never change): weights, cached lengths
    and scratch views are passed again call after call."""
    v = getattr(a, "_fastrnn_params", None)
    if v is None:
        if not a.is_c_contiguous():
            raise ValueError("cuda_launch: array arguments must be C-contiguous")
        n, item = a.size, a.dtype.itemsize
        v = (0, 0, n, item, a.device_ctypes_pointer.value or 0, n, item)
        try:
            a._fastrnn_params = v
        except AttributeError:   # an array type without an instance dict: no cache
            pass
    return v


def _f32_bits(v):
    return (int(np.float32(v).view(np.int32)),)


def _f64_bits(v):
    return (int(np.float64(v).view(np.int64)),)


def _check(err, what, refusable=False):
    """Raise on a driver error: LaunchRefused where a launch (or its shared memory limit)
    was refused for its size and refusable, else RuntimeError."""
    code = int(err)
    if code != 0:
        cls = LaunchRefused if refusable and code in _REFUSALS else RuntimeError
        raise cls(f"cuda: {what} failed ({err})")
