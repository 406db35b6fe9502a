#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (H200 image: torch, timm, OpenCV present; no
# network). Before it, here: bash benchmarks/device/fetch_wheels.sh. Then, with the device
# tool:  run(command="bash benchmarks/device/run_gpu_benchmarks.sh", carry=[".whl"],
#            timeout_s=540)
# It installs the carried wheels, then runs each benchmark under its own time limit, writing
# every output and each benchmark's results file (date, machine, command line) to $OUT (or
# ./gpu-results), so that what finished comes back even if a later step runs out of time.
# Copy the results files that came back into benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MASKPIPE_PROGRESS=0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "wheel install failed: run fetch_wheels.sh here first"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD"
{ nvidia-smi; python3 -c "import torch, timm, albumentations; print(torch.__version__, timm.__version__, albumentations.__version__, torch.cuda.get_device_name())"; } \
  2>&1 | tee "$OUT/machine.txt"

step() {  # step NAME SECONDS COMMAND...: one benchmark, its own limit, its own log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "   exit $? -> $OUT/$name.txt"; tail -n 3 "$OUT/$name.txt"
}
step gpu-quick 150 python3 benchmarks/gpu.py --quick --results "$OUT/gpu-quick.md"
step inference-cuda 90 python3 benchmarks/inference.py --device cuda --bf16 --images 2048 --results "$OUT/inference-cuda.md"
step gpu-full 240 python3 benchmarks/gpu.py --compile --results "$OUT/gpu.md"
