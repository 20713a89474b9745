#!/usr/bin/env bash
# The GPU check, as one command on a lent GPU machine (no network; its image has torch, transformers, peft, accelerate).
#   here, once:  python benchmarks/gpu_check.py prepare .gpu_assets && echo /.gpu_assets/ >> .git/info/exclude
#   for TRL's row: its wheels in .whl/ (the image lacks trl and datasets; ~1.8 MB in all):
#                pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#                  -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 && echo /.whl/ >> .git/info/exclude
#   (vLLM's own wheel is larger than a call may carry: its row runs only where vLLM is installed)
#   there:       bash benchmarks/gpu_check.sh          (device run, carry [".gpu_assets", ".whl"])
# Prints the table and writes gpu_check.{md,json} into $OUT (or runs/gpu_check). About 3-5 minutes on an H200 (2.5 and 4.5 min with TRL, 2026-12-04).
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
