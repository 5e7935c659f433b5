#!/usr/bin/env bash
# The orchestration and packaging tests (dags/, infra/, Dockerfile) in the real libraries.
#
#   dags/tests/run.sh [PYTEST_ARGS...]   run the tests; ends with "N passed, N failed, N skipped"
#   dags/tests/run.sh --relock           re-resolve requirements.in into requirements.lock
#
# The virtual environment lives in ~/.cache/defacto-dags-venv (DEFACTO_DAGS_VENV) and is
# rebuilt only when requirements.lock or the Python version changes. The end-to-end tests
# run the defacto binary at DEFACTO_BIN (default: the debug build in
# ~/.cache/defacto-target); they are skipped, saying so, when it is missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${DEFACTO_DAGS_VENV:-$HOME/.cache/defacto-dags-venv}
# shellcheck source=../../tools/pytest-venv.sh
source "$root/tools/pytest-venv.sh"

pinned_venv "$venv" "$here" dags/tests/run.sh "${1:-}"
cd "$root"
run_pytest "$venv" "$here" "$@"
