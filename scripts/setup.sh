#!/usr/bin/env bash
# Create .venv and install the workbench with its test dependencies.
#
# torch is installed first, pinned (TORCH_SPEC, default torch==2.13.0): where a CPU wheel of it is provided
# locally pip takes that one instead of the multi-GB CUDA build, and on a GPU machine the same command is the
# normal CUDA install. A torch already in the venv is kept. The project itself only asks for torch>=2.2.
#
# Everything else installs under constraints.txt (exact versions the suite passed with; scripts/lock.sh writes
# it), so a fresh machine gets the tested set. LOCK=0 installs from the ranges in pyproject.toml instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "installing $TORCH_SPEC"
  "$VENV/bin/pip" install --quiet "$TORCH_SPEC"
fi
echo "installing the workbench (editable) and its dependencies"
if [ "${LOCK:-1}" = 1 ] && [ -f constraints.txt ]; then
  # torch is TORCH_SPEC's to choose (CPU or CUDA build): leave it out of the constraints
  grep -v '^torch==' constraints.txt > "$VENV/constraints.txt"
  "$VENV/bin/pip" install --quiet -c "$VENV/constraints.txt" -e ".[dev]"
else
  "$VENV/bin/pip" install --quiet -e ".[dev]"
fi
"$VENV/bin/python" -c "import torch, transformer_lens; print('torch', torch.__version__, '| transformer-lens', transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '')"
