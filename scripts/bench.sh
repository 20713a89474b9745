#!/usr/bin/env bash
# Set up (if needed), add the benchmark's extra (TRL), and run the side-by-side benchmark. Arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[dev,bench]"
exec .venv/bin/python benchmarks/bench_opcd.py "$@"
