#!/usr/bin/env bash
# The GPU figures the issues ask for, in one run on a lent GPU machine (the `device` tool),
# within one 10-minute command:
#
#   make gpu-wheels                      # here, once: diffusers for the GPU image's Python, in .whl/
#   device run: command="bash benchmarks/gpu_figures.sh", carry=[".whl"], timeout_s=600
#
# The GPU image has torch, transformers, numpy, fsspec and matplotlib but not diffusers (KINDS.md);
# vstar_model imports nothing else at import time. Each benchmark has its own time limit, most
# important first, so a slow one costs only itself; its output goes to $OUT/<name>.txt as it runs
# (what a killed run printed still comes back) and its exit status to $OUT/summary.txt.
# Exit status: 0 when every benchmark ran to the end, 1 when one failed or hit its limit, 3 when
# the environment could not be set up.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_figures}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "setup: wheels did not install" | tee -a "$summary"; exit 3; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$PYTHON" -c "import sys, torch, diffusers, vstar_model
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)
torch.cuda.is_available() or sys.exit('this torch sees no CUDA device')
print('gpu', torch.cuda.get_device_name())"
} >>"$summary" 2>&1 || { echo "setup failed (above)" | tee -a "$summary"; exit 3; }

failed=0
# bench NAME SECONDS SCRIPT ARGS...: run benchmarks/SCRIPT under a time limit, output to $OUT/NAME.txt.
bench() {
    local name=$1 limit=$2 script=$3
    shift 3
    local start=$SECONDS
    timeout -k 10 "$limit" "$PYTHON" "benchmarks/$script" "$@" 2>&1 | tee "$OUT/$name.txt"
    local status=${PIPESTATUS[0]}
    local verdict="ok"
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then verdict="stopped at its ${limit} s limit"
    elif [ "$status" -ne 0 ]; then verdict="failed (exit $status)"; fi
    [ "$verdict" = "ok" ] || failed=1
    echo "$name: $verdict, $((SECONDS - start)) s: $script $*" | tee -a "$summary"
}

# Issue 15: TAR on / off at ModelScope's size in float16, and the TAR / SDPA grid.
bench tar_overhead 100 tar_overhead.py --device cuda --dtype float16 --size modelscope --pairs 30
bench tar_attention_grid 80 tar_attention_grid.py --device cuda --dtype float16
# Issue 12: TAR on Wan 2.1 1.3B (bf16, 480×832): step time per variant, memory; then generation.
bench tar_dit_81 120 tar_dit.py --device cuda --frames 81 --repeats 3
bench generate_wan_81 80 generate_wan.py --device cuda --frames 81
bench tar_dit_161 70 tar_dit.py --device cuda --frames 161 --repeats 3 --variants exact/tiled frame/flex
bench generate_wan_161 60 generate_wan.py --device cuda --frames 161
exit $failed
