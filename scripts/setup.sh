#!/usr/bin/env bash
# Set up everything on a fresh machine: system packages (ffmpeg, libsndfile, chromium and chromium-driver for the
# browser tests; espeak-ng with --recipe) and a virtualenv in .venv/ with the Python dependencies. Safe to run
# again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_recipe=0
[[ "${1:-}" == "--recipe" ]] && want_recipe=1

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
ldconfig -p 2>/dev/null | grep -q libsndfile.so || need+=(libsndfile1)
# Headless Chromium and its driver for tests/test_browser.py: Debian's packages, used as installed (Selenium is
# given both paths, so it downloads nothing).
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [[ $want_recipe == 1 ]]; then
  command -v espeak-ng >/dev/null || need+=(espeak-ng)
fi
if [[ ${#need[@]} -gt 0 ]]; then
  echo "setup: installing system packages: ${need[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($python --version)"
  $python -m venv .venv
fi
stamp=.venv/.requirements.sha256
current=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$current" ]]; then
  echo "setup: installing Python dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned, so nothing pulls a different (multi-GB CUDA) build as a dependency.
  .venv/bin/python -m pip install -q "$(grep -E '^torch==' requirements.txt)"
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  .venv/bin/python -m pip install -q --no-deps "silero-vad==6.2.0"  # the VAD model file only (see requirements.txt)
  echo "$current" > "$stamp"
fi

# --- .venv-pipecat: the Pipecat client for tests/test_pipecat.py (requirements-pipecat.txt) -------------------
# A venv of its own: pipecat-ai's pins clash with the worker's .venv. Rebuilt from scratch when the requirements
# change (about a minute), skipped while its stamp matches.
pipecat_stamp=.venv-pipecat/.requirements.sha256
pipecat_current=$(sha256sum requirements-pipecat.txt | cut -d' ' -f1)
if [[ ! -f $pipecat_stamp || $(cat "$pipecat_stamp") != "$pipecat_current" ]]; then
  echo "setup: building .venv-pipecat for the Pipecat tests (about a minute)"
  rm -rf .venv-pipecat
  $python -m venv .venv-pipecat
  .venv-pipecat/bin/python -m pip install -q --upgrade pip
  .venv-pipecat/bin/python -m pip install -q -r requirements-pipecat.txt
  echo "$pipecat_current" > "$pipecat_stamp"
fi

echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
