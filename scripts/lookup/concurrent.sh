#!/usr/bin/env bash
# Lookup decoding with two chats at once: how drafts and batched decode
# steps combine in the daemon (issue 23, TECHNICAL_SPEC "Lookup decoding").
#
#   scripts/lookup/concurrent.sh [ROUNDS]          (default 3)
#
# Starts qinsd on the real SmolLM2-135M-Instruct (2 kernel threads, two
# replies at once) twice per round, `--lookup off` and `--lookup on` (the
# order alternating between rounds), and for each pair of prompts runs two
# `qins ask -v` at the same moment: greedy, at most MAX_TOKENS tokens. Per
# reply its decode tok/s (first token excluded) and drafted/accepted
# tokens; per pair the wall time until both replies are done. Pairs:
#   copy+copy   edit.txt and rename.txt (both repeat their prompt)
#   free+free   open.txt and a second open-ended question (nothing to copy)
#   copy+free   edit.txt and open.txt
# Prints one markdown table of medians; raw logs stay in $OUT.
#
# Environment: QINSD, QINS (binaries) [$CARGO_TARGET_DIR or target/release],
# SMOL_QINS [~/.cache/qins/compare/SmolLM2-135M-Instruct.Q4_1.qins],
# THREADS [2], MAX_TOKENS [200], OUT [a new temporary directory].
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ROUNDS="${1:-3}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
QINSD="${QINSD:-$BIN/qinsd}"
QINS="${QINS:-$BIN/qins}"
SMOL_QINS="${SMOL_QINS:-$HOME/.cache/qins/compare/SmolLM2-135M-Instruct.Q4_1.qins}"
THREADS="${THREADS:-2}"
MAX_TOKENS="${MAX_TOKENS:-200}"
OUT="${OUT:-$(mktemp -d -t qins-lookup-concurrent-XXXXXX)}"
mkdir -p "$OUT"
for b in "$QINSD" "$QINS"; do
  [ -x "$b" ] || { echo "no $b (cargo build --release -p qinsd -p qins-client)" >&2; exit 2; }
done
[ -f "$SMOL_QINS" ] || { echo "no $SMOL_QINS (see scripts/lookup/README.md)" >&2; exit 2; }

printf 'Give three practical tips for learning to cook at home, with a short reason for each.\n' >"$OUT/free2.txt"
declare -A PAIRS=(
  [copy+copy]="$HERE/tasks/edit.txt $HERE/tasks/rename.txt"
  [free+free]="$HERE/tasks/open.txt $OUT/free2.txt"
  [copy+free]="$HERE/tasks/edit.txt $HERE/tasks/open.txt"
)
RAW="$OUT/raw.tsv"
: >"$RAW"

PID=""
stop_daemon() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=""; }
trap stop_daemon EXIT

start_daemon() { # lookup
  local sock="$OUT/qinsd.sock"
  rm -f "$sock"
  "$QINSD" --socket "$sock" --model "$SMOL_QINS" --threads "$THREADS" --max-active 2 \
    --lookup "$1" >"$OUT/qinsd-$1.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do [ -S "$sock" ] && return; sleep 0.1; done
  echo "qinsd did not start (see $OUT/qinsd-$1.log)" >&2; exit 1
}

ask() { # prompt-file out-name
  "$QINS" ask --socket "$OUT/qinsd.sock" -v --temperature 0 --max-tokens "$MAX_TOKENS" \
    <"$1" >"$OUT/$2" 2>"$OUT/$2.err"
}

# "N tokens at X tok/s" and "lookup: drafted D, accepted A" of a reply.
summary() { # err-file
  local rate drafted accepted
  rate=$(grep -o '[0-9]* tokens at [0-9.]* tok/s' "$1" | awk '{print $1 "\t" $4}')
  drafted=$(grep -o 'drafted [0-9]*' "$1" | awk '{print $2}')
  accepted=$(grep -o 'accepted [0-9]*' "$1" | awk '{print $2}')
  printf '%s\t%s\t%s' "${rate:-0	0}" "${drafted:-0}" "${accepted:-0}"
}

for round in $(seq "$ROUNDS"); do
  modes=(off on); [ $((round % 2)) -eq 0 ] && modes=(on off)
  for mode in "${modes[@]}"; do
    start_daemon "$mode"
    ask "$HERE/tasks/open.txt" "warmup-$mode-$round.txt"  # page the weights in
    for pair in copy+copy free+free copy+free; do
      read -r a b <<<"${PAIRS[$pair]}"
      echo "== round $round/$ROUNDS, lookup $mode: $pair" >&2
      started=$(date +%s.%N)
      ask "$a" "$pair-$mode-$round-a.txt" & pa=$!
      ask "$b" "$pair-$mode-$round-b.txt" & pb=$!
      wait "$pa" "$pb"
      wall=$(echo "$(date +%s.%N) - $started" | bc)
      printf '%s\t%s\t%s\ta\t%s\t%s\n' "$pair" "$mode" "$round" "$(summary "$OUT/$pair-$mode-$round-a.txt.err")" "$wall" >>"$RAW"
      printf '%s\t%s\t%s\tb\t%s\t%s\n' "$pair" "$mode" "$round" "$(summary "$OUT/$pair-$mode-$round-b.txt.err")" "$wall" >>"$RAW"
    done
    stop_daemon
  done
done

python3 - "$RAW" "$THREADS" "$MAX_TOKENS" <<'PY'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    pair, mode, rnd, chat, tokens, rate, drafted, accepted, wall = line.split("\t")
    rows[(pair, mode, chat)].append((int(tokens), float(rate), int(drafted), int(accepted), float(wall)))
print(f"Two chats at once through qinsd (SmolLM2-135M-Instruct Q4_1, {sys.argv[2]} threads, "
      f"--max-active 2, greedy, at most {sys.argv[3]} tokens); medians over rounds:\n")
print("| pair | chat | tokens | tok/s off | tok/s on | speedup | drafted | accepted | wall off s | wall on s |")
print("|---|---|---|---|---|---|---|---|---|---|")
med = statistics.median
for pair in ("copy+copy", "free+free", "copy+free"):
    for chat in ("a", "b"):
        off, on = rows[(pair, "off", chat)], rows[(pair, "on", chat)]
        if not off or not on:
            continue
        r_off, r_on = med(r[1] for r in off), med(r[1] for r in on)
        print(f"| {pair} | {chat} | {on[0][0]} | {r_off:.1f} | {r_on:.1f} | {r_on / r_off:.2f}x | "
              f"{med(r[2] for r in on):.0f} | {med(r[3] for r in on):.0f} | "
              f"{med(r[4] for r in off):.2f} | {med(r[4] for r in on):.2f} |")
PY
echo "raw outputs in $OUT" >&2
