#!/usr/bin/env bash
# Install gsparse with all its extras (DeepSpeed, graphs, plots, vision, export, Hugging Face, tests) into the current Python environment.
# torch is installed only when missing (CPU wheel 2.13.0); GPU users bring their own build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q "torch==2.13.0"
fi
"$PYTHON" -m pip install -q -e ".[deepspeed,graphs,plots,vision,export,hf,dev]"
