"""Precision "bfloat16": inference whose matrix products read bfloat16 operands.

x, h and the weights are rounded to bfloat16 (8 significant bits) where they enter a
matrix product; the products of two bfloat16 values are exact in float32 and are summed
in float32, and everything else (biases, gates, nonlinearities, the cell state, the
outputs) stays float32. This is what vdpbf16ps computes, and what torch's CPU kernels do
for a bfloat16 LSTM, at twice float32's multiply-add rate on CPUs with AVX512_BF16.

The reference backend runs the same arithmetic in NumPy (operands rounded by
``round_bf16``), so the cpu kernels are checked against it like every fast path.
"""
import numpy as np

PRECISIONS = ("float32", "bfloat16")


def check_precision(precision, dtype=np.float32):
    """Validate a precision for modules of `dtype`; returns it. "float32" means the
    module's own dtype in every product (float64 modules included)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "bfloat16" and np.dtype(dtype) != np.float32:
        raise TypeError(f"precision='bfloat16': expected a float32 module or arrays, got dtype {np.dtype(dtype)}")
    return precision


def check_bf16_call(train, dtype, projection=False):
    """The limits of a bfloat16 call (a module's or one layer's), as errors naming what to
    change. projection: an LSTM with proj_size (a layer's w_hr)."""
    check_precision("bfloat16", dtype)
    if projection:
        raise ValueError("precision='bfloat16': an LSTM with proj_size has no bfloat16 path; "
                         "use precision='float32'")
    if train:
        raise ValueError("precision='bfloat16' runs inference only: call .eval() first "
                         "(forward_layer: train=False); training runs in float32 (precision='float32')")


def round_bf16(a):
    """float32 values rounded to the nearest bfloat16 (ties to even) and returned as
    float32, as vcvtne2ps2bf16 rounds: denormals become zeros of the same sign, NaN stays
    NaN (quiet), and values past bfloat16's largest finite one become infinities."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    exponent = bits & np.uint32(0x7F800000)
    out = np.where(exponent == 0, bits & np.uint32(0x80000000), rounded)
    nan = np.isnan(a)
    if nan.any():
        out = np.where(nan, (bits | np.uint32(0x00400000)) & np.uint32(0xFFFF0000), out)
    return out.astype(np.uint32).view(np.float32).reshape(a.shape)
