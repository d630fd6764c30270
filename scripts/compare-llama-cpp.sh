#!/usr/bin/env bash
# qins against llama.cpp Q8_0 on the same weights, on this machine, in one
# interleaved run: the comparison TECHNICAL_SPEC's "Side by side" tables make.
#
#   scripts/compare-llama-cpp.sh MODEL.gguf [ROUNDS]
#
# MODEL.gguf is any GGUF both can read (F16/F32 keeps the comparison fair;
# a quantized one is requantized to Q8_0 for llama.cpp and decoded for qins).
# Environment:
#   LLAMA_CPP_BIN  directory with llama-bench and llama-quantize (default: PATH)
#   QINSD          the qinsd binary (default: target/release/qinsd)
#   THREADS        threads for both (default: 2)
#   WORK           where the Q8_0 and .qins copies go (default: ~/.cache/qins/compare)
# Per round: llama.cpp tg128 on an empty context and at depth 512 and pp512,
# qinsd bench with 128 decode steps after a 1- and a 512-token prompt (its
# prefill of 512 is the pp512 figure). Prints the medians and the ratios.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 MODEL.gguf [ROUNDS]   (see the comments at the top for the environment)" >&2
  exit 2
fi
MODEL="$(realpath "$1")"
ROUNDS="${2:-3}"
THREADS="${THREADS:-2}"
WORK="${WORK:-$HOME/.cache/qins/compare}"
QINSD="$(realpath "${QINSD:-target/release/qinsd}")"
bin() { if [ -n "${LLAMA_CPP_BIN:-}" ]; then echo "$LLAMA_CPP_BIN/$1"; else command -v "$1" || true; fi; }
BENCH="$(bin llama-bench)"
QUANTIZE="$(bin llama-quantize)"
for tool in "$BENCH" "$QUANTIZE"; do
  [ -x "$tool" ] || { echo "llama.cpp's llama-bench and llama-quantize are needed: set LLAMA_CPP_BIN to the directory that has them" >&2; exit 2; }
done
[ -x "$QINSD" ] || { echo "no qinsd at $QINSD: build it (cargo build --release -p qinsd) or set QINSD" >&2; exit 2; }

mkdir -p "$WORK"
stem="$(basename "$MODEL" .gguf)"
Q8="$WORK/$stem-q8_0.gguf"
QINS="$WORK/$stem.qins"
if [ ! -f "$Q8" ]; then
  echo "quantizing to Q8_0 for llama.cpp: $Q8" >&2
  "$QUANTIZE" --allow-requantize "$MODEL" "$Q8.partial" Q8_0 >/dev/null 2>&1
  mv "$Q8.partial" "$Q8"
fi
if [ ! -f "$QINS" ]; then
  echo "converting to .qins: $QINS" >&2
  "$QINSD" convert "$MODEL" -o "$QINS" --force >/dev/null
fi
cat "$Q8" "$QINS" >/dev/null # both in the page cache before the first round

llama() { # prints llama-bench's tokens per second for the given arguments
  "$BENCH" -m "$Q8" -t "$THREADS" -r 1 -o json "$@" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["avg_ts"])'
}
qins() { # prints decode and prefill tokens per second, bytes per token, kernel
  "$QINSD" bench "$QINS" --threads "$THREADS" --decode 128 --json "$@" 2>/dev/null |
    python3 -c 'import json, sys; r = json.load(sys.stdin)["runs"][0]; print(r["decode_tok_s"], r["prefill_tok_s"], r["weight_bytes_per_token"], r["kernel"])'
}
ROUNDS_FILE="$WORK/$stem-rounds.txt"
: >"$ROUNDS_FILE"
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  llama_empty=$(llama -p 0 -n 128)
  empty=$(qins --prompt 1)
  read -r qins_empty _ <<<"$empty"
  llama_deep=$(llama -p 0 -n 128 -d 512)
  deep=$(qins --prompt 512)
  read -r qins_deep qins_prefill bytes kernel <<<"$deep"
  llama_prefill=$(llama -p 512 -n 0)
  echo "$llama_empty $qins_empty $llama_deep $qins_deep $llama_prefill $qins_prefill $bytes $kernel" | tee -a "$ROUNDS_FILE" >&2
done

python3 - "$ROUNDS_FILE" "$THREADS" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
median = lambda i: statistics.median(float(r[i]) for r in rows)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
print(f"\n{cpu}; {sys.argv[2]} threads; qins kernel {rows[0][7]}; {float(rows[0][6]) / 1e9:.2f} GB of qins weights per token")
print(f"| {len(rows)} round(s), medians | llama.cpp Q8_0 | qins | qins / llama.cpp |")
print("|---|---|---|---|")
for label, l, q in [("decode tok/s, empty context", 0, 1), ("decode tok/s at depth 512", 2, 3), ("prefill tok/s (pp512)", 4, 5)]:
    print(f"| {label} | {median(l):.2f} | {median(q):.2f} | {median(q) / median(l):.2f}x |")
PY
