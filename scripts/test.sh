#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), lints (ruff, hadolint), type-checks (mypy), checks the
# import layers (import-linter, contracts in pyproject.toml), then runs the whole test suite.
#
#   bash scripts/test.sh                 # everything (what CI runs)
#   bash scripts/test.sh --fast          # the same checks, then only the tests that need no model, socket,
#                                        # worker process or image build (markers: tests/conftest.py)
#   bash scripts/test.sh -k engine -x    # other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
select=()
if [[ "${1:-}" == "--fast" ]]; then
  shift
  select=(-m "not model and not socket and not worker and not image")
fi
bash scripts/setup.sh
.venv/bin/python -m ruff check .
.venv/bin/hadolint Dockerfile
.venv/bin/python -m mypy
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest "${select[@]}" "$@"
