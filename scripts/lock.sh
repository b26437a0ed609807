#!/usr/bin/env bash
# Write constraints.txt: the exact version of every package in .venv, as the test suite last passed with it.
# scripts/setup.sh installs under these constraints, so a fresh install reproduces the tested set. Local version
# labels (torch's "+cpu") are dropped so the same file serves CPU and CUDA builds of the same torch release.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
{
  echo "# Exact versions the test suite passed with (scripts/lock.sh writes this file; scripts/setup.sh uses it)."
  "$VENV/bin/pip" freeze --exclude-editable --disable-pip-version-check | grep -v '^#' | grep -v '^-e ' \
    | sed -E 's/^([A-Za-z0-9_.-]+==[^+ ]+)\+[A-Za-z0-9.]+$/\1/' | LC_ALL=C sort -f
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
