#!/usr/bin/env bash
# Set up (if needed) and run the main job: distill a system prompt into the default model on this CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/opcd demo "$@"
