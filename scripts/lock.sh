#!/usr/bin/env bash
# Re-resolve requirements.lock from pyproject.toml (exact pins for Python 3.11). Run after changing dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
uv pip compile pyproject.toml --python-version 3.11 -o requirements.lock --no-header
if grep -qiE '^(torch|nvidia-)' requirements.lock; then echo "lock pulls torch/CUDA: refuse" >&2; exit 1; fi
