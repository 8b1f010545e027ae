#!/usr/bin/env bash
# The service command: sets everything up (scripts/setup.sh), then serves RunPod's job API locally
# (POST /run, /runsync, GET/POST /status/{id}) on http://127.0.0.1:8000 with the model in PARAKEET_MODEL.
# Extra arguments go to rp_handler.py (e.g. --rp_api_port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -u rp_handler.py --rp_serve_api --rp_api_host "${HOST:-127.0.0.1}" --rp_api_port "${PORT:-8000}" "$@"
