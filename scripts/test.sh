#!/usr/bin/env bash
# Set up, then run the whole test suite (single-process and multi-process tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
