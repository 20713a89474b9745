#!/usr/bin/env bash
# Set up (if needed), check the import layers (pyproject.toml's import-linter contracts), and run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest "$@"
