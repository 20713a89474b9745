#!/usr/bin/env bash
# The GPU check, as one command on a lent GPU machine (no network; its image has torch, transformers, peft, accelerate).
#   here, once:  python benchmarks/gpu_check.py prepare .gpu_assets && echo /.gpu_assets/ >> .git/info/exclude
#   optional:    vLLM wheels in .whl/ (see the device tool's README; vLLM's own wheel is larger than a call may carry)
#   there:       bash benchmarks/gpu_check.sh          (device run, carry [".gpu_assets"] or [".gpu_assets", ".whl"])
# Prints the table and writes gpu_check.{md,json} into $OUT (or runs/gpu_check). About 3-5 minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
[ -d .gpu_assets ] || { echo "gpu_check: .gpu_assets is missing: run 'python benchmarks/gpu_check.py prepare .gpu_assets' first and carry it"; exit 2; }
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_check.py check --assets .gpu_assets
