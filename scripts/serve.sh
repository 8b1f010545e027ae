#!/usr/bin/env bash
# The service command: sets everything up (scripts/setup.sh), then serves RunPod's job API locally
# (POST /run, /runsync, GET/POST /status/{id}) on http://127.0.0.1:8000 with the model in PARAKEET_MODEL.
# Extra arguments go to rp_handler.py (e.g. --rp_api_port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# OpenMP threads that spin while waiting steal the cores the WebSocket server and the job loop need when the model
# runs on a CPU: with the default policy, 4 live sessions on 2 cores ran 2.2x slower per step (docs/BENCHMARKS.md).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python -u rp_handler.py --rp_serve_api --rp_api_host "${HOST:-127.0.0.1}" --rp_api_port "${PORT:-8000}" "$@"
