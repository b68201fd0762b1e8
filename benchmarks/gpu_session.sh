#!/usr/bin/env bash
# A GPU session's measurements in a few device calls (the device tool allows 10 minutes a
# call and, lately, 15 a session, a machine start included): each stage writes its log and
# result files under $OUT and the last lines printed are a short summary. Run from the
# repository root on the device:
#
#   bash benchmarks/gpu_session.sh full              # ~9 min, stops itself by 510 s: the
#                                                    # issue's result file: full-size checks
#                                                    # (the local kernels first), then the
#                                                    # timing grid against cuDNN (rnn_tanh,
#                                                    # whose targets the local kernels are
#                                                    # for, first); saved after every point
#   bash benchmarks/gpu_session.sh check local       # ~9 min (estimated; give `local` its own
#                                                    # call if `check` runs long): full-size
#                                                    # checks (the local kernels first),
#                                                    # fastrnn.torch on CUDA tensors, the local
#                                                    # kernels against FASTRNN_CUDA_LOCAL=0
#   bash benchmarks/gpu_session.sh fixed sweep       # ~8 min (estimated): where a short
#                                                    # call's time goes (at rnn_tanh H = 256
#                                                    # ~0.48 ms a call is not the steps), then
#                                                    # the local kernels' layout choices
#                                                    # (threads, rows a state read, register
#                                                    # weights, sequences a block) against
#                                                    # each other and cuDNN
#   bash benchmarks/gpu_session.sh check sync ab     # ~5 min: full-size checks, fastrnn.torch
#                                                    # on CUDA tensors, grid-sync cost, the
#                                                    # kernels against ab-base's
#   bash benchmarks/gpu_session.sh switches          # ~4 min: A/B of FASTRNN_CUDA_GRID_SYNC,
#                                                    # _BT and _MAX_BLOCKS at the small shapes
#   bash benchmarks/gpu_session.sh bblocks           # ~4 min: the default batch split against
#                                                    # none (B = 64, 256), and against step-gemm
#   bash benchmarks/gpu_session.sh paths             # ~4 min: step-gemm vs kernel path
#   bash benchmarks/gpu_session.sh lstmp             # ~5 min: the LSTM with a projection vs cuDNN
#   bash benchmarks/gpu_session.sh ncu               # ~3 min: Nsight Compute stall reasons of
#                                                    # the persistent kernels at two shapes
# in that order of value (15 min of device time, a machine start included, hold `full` in
# one device call of timeout_s 600; 30 min about the first three or four).
#
# Before the session, on the machine with the repository (network there, none on the device):
#   mkdir -p ab-base && git archive 0bc0d2b fastrnn | tar -x -C ab-base   # kernels of the last
#                                                                      # H100 run, for `ab`
#   python3 -m pip download -q -d .whl --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 numpy==2.4.6 numba-cuda==0.30.4 \
#       pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.3 pygments==2.21.0
# and carry ab-base and .whl (both ignored by git). Without .whl the image's numba-cuda is used.
set -u
OUT=${OUT:-gpu-session-out}
mkdir -p "$OUT"
summary=()
failed=0

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0
unset NUMBA_ENABLE_CUDASIM
python3 - <<'EOF' | tee "$OUT/versions.txt"
import importlib, platform
print("python", platform.python_version())
for m in ("numpy", "numba", "numba_cuda", "torch", "cupy"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as exc:
        print(m, "missing:", type(exc).__name__)
EOF
nvidia-smi -L 2>&1 | tee -a "$OUT/versions.txt"

step() {   # step NAME COMMAND...: run, log to $OUT/NAME.log, keep the last line for the summary
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || failed=1
    summary+=("$name rc=$rc $((SECONDS - t0))s: $(grep -v '^\s*$' "$OUT/$name.log" | tail -1 | cut -c1-150)")
}

for stage in "$@"; do
    case $stage in
        check)
            step check python3 benchmarks/gpu_check.py --budget 0 --out "$OUT/gpu-check-only.json"
            # fastrnn.torch on CUDA tensors against torch.nn (cuDNN) on the same GPU (1-2 min:
            # the float64 kernels compile first)
            if python3 -c "import pytest" 2>/dev/null; then
                step adapter python3 -m pytest -q -p no:cacheprovider tests/test_torch_adapter.py \
                    tests/test_projection.py -k on_the_gpu
            else
                summary+=("adapter skipped: no pytest on the device (add it to .whl, see the header)")
            fi ;;
        sync) step sync python3 benchmarks/gpu_profile.py --sync-only --out "$OUT" ;;
        ab)
            if [ -d ab-base/fastrnn ]; then
                step ab-kernels python3 benchmarks/gpu_ab.py --base ab-base --out "$OUT/gpu-ab-kernels.json"
            else
                summary+=("ab-kernels skipped: no ab-base/fastrnn (see the header)")
            fi ;;
        switches)   # the latency-bound shapes, where a barrier or the block count matters
            # (of the units-split kernels: the local ones have neither)
            rnn256="rnn_tanh:256:1:256:inf,rnn_tanh:256:8:256:inf,rnn_tanh:256:8:256:train"
            step ab-flag env FASTRNN_CUDA_LOCAL=0 python3 benchmarks/gpu_ab.py --base . --head-env FASTRNN_CUDA_GRID_SYNC=flag \
                --shapes "$rnn256,lstm:512:8:256:train,lstm:512:8:32:inf,gru:512:8:32:inf" \
                --out "$OUT/gpu-ab-flag.json"
            step ab-blocks16 env FASTRNN_CUDA_LOCAL=0 python3 benchmarks/gpu_ab.py --base . --head-env FASTRNN_CUDA_MAX_BLOCKS=16 \
                --shapes "$rnn256" --out "$OUT/gpu-ab-blocks16.json"
            step ab-flag-blocks16 env FASTRNN_CUDA_LOCAL=0 python3 benchmarks/gpu_ab.py --base . \
                --head-env FASTRNN_CUDA_GRID_SYNC=flag --head-env FASTRNN_CUDA_MAX_BLOCKS=16 \
                --shapes "$rnn256" --out "$OUT/gpu-ab-flag-blocks16.json"
            step ab-bt4 python3 benchmarks/gpu_ab.py --base . --head-env FASTRNN_CUDA_BT=4 \
                --shapes "lstm:1024:8:256:train,gru:1024:8:256:train,lstm:512:8:256:train,lstm:512:8:256:inf" \
                --out "$OUT/gpu-ab-bt4.json" ;;
        bblocks)   # the batch split's default (8 batch blocks from B = 64) against none, at the
            # shapes it changes (the unmeasured ones first), then split against step-gemm for
            # the gated cells at B = 256, which keep step-gemm by default
            step ab-bblocks-default env FASTRNN_CUDA_LOCAL=0 python3 benchmarks/gpu_ab.py --base . --base-env FASTRNN_CUDA_BATCH_BLOCKS=1 \
                --shapes "lstm:256:64:256:inf,gru:256:64:256:inf,gru:256:64:256:train,rnn_tanh:256:256:256:train,rnn_tanh:256:64:256:inf,lstm:256:64:256:train,rnn_tanh:256:256:256:inf,lstm:384:64:256:train" \
                --out "$OUT/gpu-ab-bblocks-default.json"
            step ab-bblocks-gated env FASTRNN_CUDA_LOCAL=0 python3 benchmarks/gpu_ab.py --base . --head-env FASTRNN_CUDA_STEP_GEMM=0 \
                --shapes "lstm:256:256:256:inf,lstm:256:256:256:train,gru:256:256:256:inf,gru:256:256:256:train" \
                --out "$OUT/gpu-ab-bblocks-gated.json" ;;
        local)   # the local kernels (the default where W_hh fits one SM) against the path
            # each shape took before them (FASTRNN_CUDA_LOCAL=0), the missed targets first
            step ab-local python3 benchmarks/gpu_ab.py --base . --base-env FASTRNN_CUDA_LOCAL=0 \
                --shapes "rnn_tanh:256:1:256:inf,rnn_tanh:256:8:256:inf,rnn_tanh:256:8:256:train,rnn_tanh:256:1:32:inf,rnn_tanh:256:256:256:inf,rnn_tanh:256:256:256:train,rnn_tanh:256:64:256:train,lstm:128:8:256:inf,lstm:128:8:256:train,gru:128:8:256:train,lstm:128:256:256:train,gru:128:64:256:inf" \
                --out "$OUT/gpu-ab-local.json" ;;
        fixed) step fixed python3 benchmarks/gpu_overhead.py --fixed --out "$OUT" ;;
        sweep) step sweep python3 benchmarks/gpu_local_sweep.py --out "$OUT/gpu-local-sweep.json" ;;
        paths) step paths python3 benchmarks/gpu_paths.py --out "$OUT/gpu-paths.json" ;;
        lstmp)   # the LSTM with a projection (proj_size = H/4) against cuDNN's
            step lstmp python3 benchmarks/gpu_check.py --skip-check --timing-cells lstmp --quick \
                --bs 1,8,64 --budget 240 --out "$OUT/gpu-lstmp.json" ;;
        full)   # 510 s: a point started then still ends inside a 600-s device call
            step full python3 benchmarks/gpu_check.py --budget 360 --deadline 510 \
                --timing-cells rnn_tanh,lstm,gru --out "$OUT/gpu-check.json" ;;
        ncu)   # where a small step's time goes: stall reasons of the local kernels (RNN
            # H=256) and the persistent ones (LSTM H=1024)
            NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
            for shape in "rnn_tanh 256 1 64" "lstm 1024 8 64"; do
                step "ncu-${shape// /-}" "${NCU:-ncu}" --clock-control none -k 'regex:persistent|local' \
                    --launch-skip 2 --launch-count 2 --section SpeedOfLight --section LaunchStats \
                    --section WarpStateStats --section SchedulerStats --section SourceCounters \
                    python3 benchmarks/gpu_ncu_target.py $shape
            done
            FASTRNN_CUDA_LOCAL=0 FASTRNN_CUDA_GRID_SYNC=flag step ncu-rnn_tanh-256-1-64-flag "${NCU:-ncu}" --clock-control none \
                -k regex:persistent --launch-skip 2 --launch-count 2 --section WarpStateStats \
                --section SourceCounters python3 benchmarks/gpu_ncu_target.py rnn_tanh 256 1 64 ;;
        *) echo "gpu_session: unknown stage $stage (check local fixed sweep sync ab switches bblocks full paths lstmp ncu)"; exit 2 ;;
    esac
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $failed
