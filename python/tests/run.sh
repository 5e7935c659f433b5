#!/usr/bin/env bash
# The Python API's tests: builds the native module into a pinned virtual environment with
# maturin (a debug build, in the shared cargo target directory), then runs pytest.
#
#   python/tests/run.sh [PYTEST_ARGS...]   build + test; the last line is "N passed, N failed, N skipped"
#   python/tests/run.sh --relock           re-resolve requirements.in into requirements.lock
#
# The environment lives in ~/.cache/defacto-python-venv (DEFACTO_PYTHON_VENV) and is made
# again only when requirements.lock, the Python version or the pip version changes. Tests that
# compare with the command line run the binary at DEFACTO_BIN (default: the debug build in the
# target directory) and are skipped, saying so, when it is missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crate=$(cd "$here/.." && pwd)
root=$(cd "$crate/.." && pwd)
venv=${DEFACTO_PYTHON_VENV:-$HOME/.cache/defacto-python-venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/defacto-target}
export DEFACTO_BIN=${DEFACTO_BIN:-$CARGO_TARGET_DIR/debug/defacto}
# shellcheck source=../../tools/pytest-venv.sh
source "$root/tools/pytest-venv.sh"

pinned_venv "$venv" "$here" python/tests/run.sh "${1:-}"

# The native module, built like any workspace crate (same profile, same Cargo.lock), then
# installed into the environment together with python/defacto (editable).
echo "building the native module (maturin develop, debug)"
if ! (cd "$crate" && VIRTUAL_ENV=$venv PATH="$venv/bin:$PATH" \
      "$venv/bin/maturin" develop --quiet --manifest-path "$crate/Cargo.toml"); then
  echo "maturin develop failed: the Python API was not built" >&2
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi

cd "$root"
run_pytest "$venv" "$here" "$@"
