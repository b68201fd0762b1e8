"""cffi builder (out-of-line API mode) for the C/OpenMP kernels in csrc/.

Used by setup.py's ``cffi_modules``; also runnable by hand (``python fastrnn/_build_cpu.py``)
to build the extension in place. The cdef is read from csrc/fastrnn.h so the C contract
is written once."""
import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")


def _cdef_from_header(path):
    text = open(path).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            if re.match(r"#define\s+\w+\s+-?\d+\s*$", line):
                keep.append(line)  # integer constants are understood by cdef
            continue
        keep.append(line)
    return "\n".join(keep)


def _compile_args():
    if sys.platform == "win32":
        return ["/O2", "/openmp"], []
    # Generic x86-64 flags: the kernels pick AVX-512 / AVX2 at run time themselves.
    # -fno-wrapv undoes Python's CFLAGS (wrapping index arithmetic cost 10-25% at B=32);
    # -fno-math-errno lets sqrt vectorize (the kernels never read errno).
    # -fno-trapping-math lets gcc compute both sides of a clamp in the cell loops (nothing
    # reads the FP exception flags): AVX2 has no masked arithmetic, and without it the
    # LSTM and GRU gate loops stayed scalar there (a quarter of an LSTM inference on Zen 3).
    return (["-O3", "-fno-wrapv", "-fno-math-errno", "-fno-trapping-math", "-std=gnu11", "-ffp-contract=fast",
             "-fopenmp", "-Wall"],
            ["-fopenmp", "-lm"])


ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header(os.path.join(CSRC, "fastrnn.h")))
_cflags, _ldflags = _compile_args()
ffibuilder.set_source(
    "fastrnn._fastrnn_cpu",
    '#include "fastrnn.h"',
    sources=[os.path.relpath(os.path.join(CSRC, "kernels.c"))],
    include_dirs=[CSRC],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
    depends=[os.path.join(CSRC, f) for f in ("fastrnn.h", "recurrence.inc", "direct.inc", "gemm_tile.inc", "gemm_bf16.inc", "weight_grads.inc", "cell_rows.inc", "vecmath.inc", "dense.inc", "projection.inc", "optim.inc")],
    optional=True,  # no compiler / no OpenMP: install anyway, backend 'cpu' says why it is missing
)

if __name__ == "__main__":
    os.chdir(os.path.dirname(HERE))
    ffibuilder.compile(tmpdir=".", verbose=True)
