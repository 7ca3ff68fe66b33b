#!/usr/bin/env bash
# Prints the Python interpreter dhp's Python package is built and tested with: $DHP_PYTHON
# when set, else the first of python3 (PATH) and /usr/bin/python3 that imports torch (Debian's
# python3-torch belongs to /usr/bin/python3, which need not be the python3 on PATH), else
# python3. The C++ build (scripts/build.sh), the tests and CI use it.
set -euo pipefail
if [ -n "${DHP_PYTHON:-}" ]; then
  "$(command -v "$DHP_PYTHON")" -c "import sys; print(sys.executable)"
  exit 0
fi
for candidate in python3 /usr/bin/python3; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if "$path" -c "import torch" >/dev/null 2>&1; then
    # pyenv's shims are scripts: report the interpreter they run.
    "$path" -c "import sys; print(sys.executable)"
    exit 0
  fi
done
command -v python3
