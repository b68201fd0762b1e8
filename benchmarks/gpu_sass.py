"""Compile the cuda backend's kernels for a GPU architecture on a machine without a GPU,
and report what the compiler says: registers, spills and stack per kernel (ptxas -v)
and, for the kernels with a matrix-product loop, the instructions per FMA of the loop
with the most FMAs (the SASS, through cuobjdump).

The simulator runs the kernels as Python, so it accepts code that the CUDA target
rejects and says nothing about what the GPU executes; this is the check in between.
It needs NVVM, NVRTC, ptxas and (for the loop counts) cuobjdump + nvdisasm, which
`pip install -e '.[sass]'` installs from NVIDIA's wheels, or a CUDA toolkit on PATH.

    python benchmarks/gpu_sass.py                 # every kernel, table on stdout
    python benchmarks/gpu_sass.py --quick --check # float32, BT = 1 only; exit 1 on a
                                                  # failure or a spill
    python benchmarks/gpu_sass.py --json out.json --sass-dir sass/

Exit status: 0 ok, 1 a kernel failed to compile or spilled (with --check), 3 the tools
are missing (nothing was compiled).
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)   # the real CUDA target, not the simulator
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# Argument types by parameter name: every kernel parameter must be in one of these sets
# (an unknown name fails loudly, so a new parameter cannot be typed by accident).
FLOAT_ARRAYS = {"W", "Wf", "Wb", "xp", "b_ih", "b_hh", "hbuf", "cst", "y", "hout", "gates", "cin",
                "cout", "hhn", "pre", "dy", "carry", "dc", "dgi", "dgh", "dgT", "dh0",
                "A", "Bm", "C", "bias", "X", "out", "w", "a",
                "h0", "c0", "h_T", "c_T", "dh", "dcin",
                "hcur", "c", "c_in", "c_out", "m", "h_in", "hnew", "dhs", "dm", "dg", "src", "dst"}
INT_ARRAYS = {"lengths"}
UINT32_ARRAYS = {"bar"}
BOOLS = {"has_bias", "has_dy", "accumulate", "backward", "kfast", "has_c", "has_dh", "has_dc",
         "has_cell"}
INTS = {"T", "B", "H", "Bp", "Bs", "nbb", "hs", "S", "rounds", "rev", "train", "KC", "s", "aoff", "sam",
        "sa1", "sa2", "boff", "sb1", "sb2", "sbn", "coff", "scm", "scn", "M", "N", "K", "K2",
        "R", "G", "slot0", "nslots", "first", "nzero", "P",
        "v"}   # fill's value: the Python int 0 at every call site


def find_tool(name):
    """A CUDA tool from NVIDIA's pip wheels (nvidia/cu*/bin), else CUDA_HOME, else PATH:
    the wheels first, because numba takes NVVM from them too and ptxas must accept the
    PTX version that NVVM writes."""
    roots = sorted(glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu*")),
                   reverse=True)
    roots += [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", "")]
    for r in roots:
        p = os.path.join(r, "bin", name)
        if r and os.access(p, os.X_OK):
            return p
    return shutil.which(name)


def compilers(arch=(9, 0)):
    """(tools, None) when kernels can be compiled for `arch` here, else (tools, why not):
    ptxas, and cuobjdump (None without nvdisasm, which it needs) for the SASS."""
    tools = {n: find_tool(n) for n in ("ptxas", "cuobjdump", "nvdisasm")}
    if not tools["nvdisasm"]:
        tools["cuobjdump"] = None
    if not tools["ptxas"]:
        return tools, "ptxas not found, nor a CUDA toolkit on PATH"
    return tools, offline_compiler(arch)


def offline_compiler(arch=(9, 0)):
    """Make numba compile for `arch` without a device; None if it can, else why not."""
    try:
        import numba.cuda.dispatcher as disp
        from numba import cuda

        class _Device:   # device functions ask the current device for its architecture
            compute_capability = arch
        disp.get_current_device = lambda: _Device()
        cuda.compile_ptx(lambda x: None, "void(int32)", cc=arch)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def arg_types(pyfunc, dtype):
    from numba import types
    fl = types.Array(dtype, 1, "C")
    code = pyfunc.__code__
    out = []
    for n in code.co_varnames[:code.co_argcount]:
        if n in FLOAT_ARRAYS:
            out.append(fl)
        elif n in INT_ARRAYS:
            out.append(types.Array(types.int32, 1, "C"))
        elif n in UINT32_ARRAYS:
            out.append(types.Array(types.uint32, 1, "C"))
        elif n in BOOLS:
            out.append(types.boolean)
        elif n in INTS:
            out.append(types.int64)
        else:
            raise KeyError(f"{pyfunc.__name__}: no type for parameter {n!r}; add it to gpu_sass.py")
    return tuple(out)


def kernel_list(quick):
    """(label, python function, numba element type) of every kernel the backend launches."""
    import numpy as np
    from numba import from_dtype
    from fastrnn.backends import cuda as cu
    from fastrnn.backends import cuda_dense as dense
    from fastrnn.backends import cuda_local as local
    from fastrnn.backends import cuda_projection as proj
    from fastrnn.backends import cuda_projection_kernels as proj_kernels
    from fastrnn.backends import cuda_recurrence as rec
    from fastrnn.backends import cuda_setup as setup
    from fastrnn.cells import CELLS
    dtypes = [np.float32] if quick else [np.float32, np.float64]
    out = []
    for dt in dtypes:
        nb = from_dtype(np.dtype(dt))
        tag = np.dtype(dt).name
        for cell, spec in CELLS.items():
            if quick and cell == "rnn_relu":
                continue
            for BT in ([1] if quick else [1, 4]):
                for name, k in rec.kernels(spec.code, dt, BT).items():
                    out.append((f"{name} {cell} BT={BT} {tag}", k.py_func, nb))
                for name, k in rec.kernels(spec.code, dt, BT, flag=True).items():
                    if "persistent" in name:   # FASTRNN_CUDA_GRID_SYNC=flag
                        out.append((f"{name} {cell} BT={BT} {tag} flag", k.py_func, nb))
        # the local kernels at the layouts an H100 plans (132 SMs, 227 KiB): the largest
        # layer of each cell, at 1, 2 and 4 sequences a block (B <= 132, 264, 528; GRU
        # H = 160 only to 132). benchmarks/gpu_local_sweep.py --sass compiles the layouts
        # it times.
        for cell, H, Bs in (("rnn_tanh", 256, (1, 256, 528)), ("lstm", 128, (1, 256, 528)),
                            ("gru", 128, (1, 256, 528)), ("gru", 160, (1,))):
            if dt != np.float32 or (quick and H == 160):
                continue
            G = CELLS[cell].gates
            for B in (Bs[:1] if quick else Bs):
                for bw in (False, True):
                    L = local.layout(G, H, B, 4, bw, 132, 227 * 1024)
                    k = local.kernel(CELLS[cell].code, dt, bw, L["S"], L["KS"], L["R"], L["BQ"], L["NT"], L["U"])
                    out.append((f"{k.py_func.__name__} {cell} H={H} BQ={L['BQ']} {tag}", k, nb))
        for k in dense.kernels(dt):
            out.append((f"{k.py_func.__name__} {tag}", k.py_func, nb))
        for name, k in proj_kernels.kernels(np.dtype(dt)).items():   # the projected LSTM's steps
            out.append((f"{name} lstmp {tag}", k.py_func, nb))
        if dt == np.float32:
            for k in (dense._fill_kernel, dense._states_kernel, cu._pack_kernel, setup._init_state_kernel,
                      setup._init_grads_kernel, proj._copy_kernel):
                out.append((f"{k.py_func.__name__} {tag}", k.py_func, nb))
    return out


def loops(sass):
    """(instructions, loops): the SASS as a list of instruction texts, and each loop as the
    (first, last) instruction indices of a backward branch and its target."""
    ins = [(int(a, 16), t) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", sass)]
    where = {a: i for i, (a, _) in enumerate(ins)}
    spans = []
    for i, (a, t) in enumerate(ins):
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", t)
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in where:
            spans.append((where[int(m.group(1), 16)], i))
    return [t for _, t in ins], spans


def fma_loops(sass):
    """(instructions, FMAs) of the innermost loop (a backward branch with no loop inside)
    that reads shared memory and has the most FMAs, or None: the product loop of the
    recurrence and matmul kernels (the gates' exp and tanh also use FMAs, not LDS)."""
    ins, spans = loops(sass)
    best = None
    for lo, hi in spans:
        if any(lo <= l2 and h2 <= hi and (l2, h2) != (lo, hi) for l2, h2 in spans):
            continue   # not innermost
        body = ins[lo:hi + 1]
        fma = sum(bool(re.match(r"(@!?U?P\w+ )?[FD]FMA", x)) for x in body)
        lds = any(re.match(r"(@!?U?P\w+ )?LDS", x) for x in body)
        if fma and lds and (best is None or fma > best[1]):
            best = (len(body), fma)
    return best


def loop_divisions(sass):
    """Integer divisions inside the kernel's largest loop (the persistent kernels' time
    loop, the step kernels' rounds): each is a ~20-instruction sequence in series, or a
    call when an operand needs 64 bits. Counted by the I2F.U32.RP that starts each."""
    ins, spans = loops(sass)
    if not spans:
        return 0
    lo, hi = max(spans, key=lambda s: s[1] - s[0])
    return sum("I2F.U32.RP" in t for t in ins[lo:hi + 1])


def compile_one(label, pyfunc, nb, arch, tools, workdir):
    from numba import cuda
    row = dict(kernel=label)
    bounds = None
    if hasattr(pyfunc, "py_func"):   # a dispatcher: compile with its launch bounds
        bounds = pyfunc.targetoptions.get("launch_bounds")
        pyfunc = pyfunc.py_func
    try:
        ptx, _ = cuda.compile_ptx(pyfunc, arg_types(pyfunc, nb), cc=arch, launch_bounds=bounds)
    except Exception as exc:   # a typing or lowering error the simulator did not see
        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return row
    base = os.path.join(workdir, re.sub(r"[^A-Za-z0-9_]+", "_", label))
    with open(base + ".ptx", "w") as f:
        f.write(ptx)
    sm = f"sm_{arch[0]}{arch[1]}"
    p = subprocess.run([tools["ptxas"], f"-arch={sm}", "-v", "-c", base + ".ptx", "-o", base + ".cubin"],
                       capture_output=True, text=True)
    if p.returncode:
        row.update(ok=False, error="ptxas: " + p.stderr.strip()[:300])
        return row
    num = lambda pat: int((re.search(pat, p.stderr) or [0, 0])[1])
    row.update(ok=True, registers=num(r"Used (\d+) registers"),
               spill_stores=num(r"(\d+) bytes spill stores"), spill_loads=num(r"(\d+) bytes spill loads"),
               stack=num(r"(\d+) bytes stack frame"))
    if tools.get("cuobjdump"):
        env = dict(os.environ, PATH=os.path.dirname(tools["nvdisasm"]) + os.pathsep + os.environ["PATH"])
        s = subprocess.run([tools["cuobjdump"], "-sass", base + ".cubin"], capture_output=True,
                           text=True, env=env).stdout
        with open(base + ".sass", "w") as f:
            f.write(s)
        row["instructions"] = len(re.findall(r"/\*[0-9a-f]{4,}\*/\s+\S", s))
        row["loop_divisions"] = loop_divisions(s)
        loop = fma_loops(s)
        if loop:
            row.update(loop_instructions=loop[0], loop_fma=loop[1],
                       per_fma=round(loop[0] / loop[1], 2))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="9.0", help="compute capability (default 9.0, H100)")
    ap.add_argument("--quick", action="store_true", help="float32, BT = 1, no rnn_relu")
    ap.add_argument("--check", action="store_true", help="exit 1 on a failure or a spill")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--sass-dir", help="keep the PTX, cubin and SASS files here")
    ap.add_argument("--only", help="only kernels whose label contains this")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="every N-th kernel from the I-th (N processes compile the list in parallel)")
    a = ap.parse_args(argv)
    shard, shards = (int(v) for v in a.shard.split("/"))
    if not 0 <= shard < shards:
        ap.error(f"--shard: expected I/N with 0 <= I < N, got {a.shard!r}")
    arch = tuple(int(x) for x in a.arch.split("."))
    tools, why = compilers(arch)
    if why:
        print(f"gpu_sass: cannot compile for the GPU here ({why}); pip install -e '.[sass]'")
        return 3
    work = a.sass_dir or tempfile.mkdtemp(prefix="fastrnn-sass-")
    os.makedirs(work, exist_ok=True)
    rows = []
    for i, (label, fn, nb) in enumerate(kernel_list(a.quick)):
        if (a.only and a.only not in label) or i % shards != shard:
            continue
        r = compile_one(label, fn, nb, arch, tools, work)
        rows.append(r)
        if r["ok"]:
            loop = f"{r['per_fma']:5.2f} ({r['loop_instructions']}/{r['loop_fma']})" if "per_fma" in r else ""
            print(f"{label:42s} regs {r['registers']:3d}  spill {r['spill_stores']:3d}/{r['spill_loads']:<3d} "
                  f"stack {r['stack']:4d}  instr {r.get('instructions', 0):6d}  "
                  f"div/loop {r.get('loop_divisions', '-')!s:>2}  loop instr/FMA {loop}")
        else:
            print(f"{label:42s} FAILED: {r['error']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(arch=a.arch, rows=rows), f, indent=1)
    if not a.sass_dir:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in rows if not r["ok"] or r["spill_stores"] or r["spill_loads"]]
    print(f"{len(rows)} kernels, {len(bad)} failed or spilled")
    return 1 if a.check and (bad or not rows) else 0


if __name__ == "__main__":
    sys.exit(main())
