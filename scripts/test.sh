#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), lints, then runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k engine -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check .
.venv/bin/hadolint Dockerfile
.venv/bin/python -m pytest "$@"
