#!/usr/bin/env bash
# Prompt-lookup decoding, measured: qins with and without lookup on the task
# set in tasks/ (real SmolLM2-135M-Instruct), llama.cpp's llama-lookup on the
# same prompts, and the cost of verifying k tokens at Phi-3.5 shape.
#
#   scripts/lookup/bench.sh [tasks|phi35|all] [ROUNDS]      (default: all 3)
#
# tasks: per task, ROUNDS rounds; each round runs qins off/on (the order
#   alternates between rounds) and llama-lookup with --spec-draft-n-max 0
#   (its plain decoding: the same program, loop and timer) and with drafts.
#   Reports decode tok/s off and on (medians), the speedup, drafted,
#   accepted, acceptance rate and whether the greedy output of every "on"
#   run is byte-identical to the "off" one.
# phi35: `qinsd bench --verify-tokens` per kernel (KERNELS) on the random
#   Phi-3.5-shaped model and llama-bench's k-token batch costs at the same
#   depth, then the projected speedup of each task: the task runs' own
#   verification passes replayed at those costs (report.py, replay()).
#
# Environment (defaults in brackets):
#   QINSD        qinsd binary [$CARGO_TARGET_DIR or target/release/qinsd]
#   SMOL_QINS    [~/.cache/qins/compare/SmolLM2-135M-Instruct.Q4_1.qins]
#   SMOL_GGUF    the same Q4_1 weights for llama.cpp
#                [~/.cache/qins/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
#   PEER         llama.cpp builds and the Phi-3.5 models [~/.cache/qins-peer]
#   TASKS        task names to run [every tasks/*.txt]
#   LOOKUP_ON    what the "on" runs pass to --lookup [on; always: every draft]
#   THREADS [2]  MAX_TOKENS [256]  LLAMA_DRAFT [8, drafted tokens per step]
#   KERNELS      qins kernels for phi35 [avx512-vnni avx512-bf16 avx512 avx-vnni avx2-int avx2];
#                one the CPU lacks is skipped
#   DEPTH [512]  cache depth of the verification passes  VERIFY_REPS [7]
#   OUT          where raw outputs and logs go [a new temporary directory]
# llama.cpp's build/ (native) and build-avx2/ need llama-bench and
# llama-lookup: cmake --build build --target llama-lookup (see the README).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MODE="${1:-all}"
ROUNDS="${2:-3}"
QINSD="${QINSD:-${CARGO_TARGET_DIR:-$ROOT/target}/release/qinsd}"
SMOL_QINS="${SMOL_QINS:-$HOME/.cache/qins/compare/SmolLM2-135M-Instruct.Q4_1.qins}"
SMOL_GGUF="${SMOL_GGUF:-$HOME/.cache/qins/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
PEER="${PEER:-$HOME/.cache/qins-peer}"
THREADS="${THREADS:-2}"
MAX_TOKENS="${MAX_TOKENS:-256}"
LLAMA_DRAFT="${LLAMA_DRAFT:-8}"
LOOKUP_ON="${LOOKUP_ON:-on}"
KERNELS="${KERNELS:-avx512-vnni avx512-bf16 avx512 avx-vnni avx2-int avx2}"
DEPTH="${DEPTH:-512}"
TASKS="${TASKS:-$(cd "$HERE/tasks" && ls *.txt | sed 's/\.txt$//' | tr '\n' ' ')}"
VERIFY_REPS="${VERIFY_REPS:-7}"
OUT="${OUT:-$(mktemp -d -t qins-lookup-XXXXXX)}"
mkdir -p "$OUT"
case "$MODE" in tasks|phi35|all) ;; *) echo "usage: $0 [tasks|phi35|all] [ROUNDS]" >&2; exit 2 ;; esac
[ -x "$QINSD" ] || { echo "no qinsd at $QINSD (cargo build --release -p qinsd)" >&2; exit 2; }
# Every engine on the same thread count: qinsd's kernel pool (serve's
# --threads / QINS_THREADS; generate's global pool follows RAYON_NUM_THREADS).
export QINS_THREADS="$THREADS" RAYON_NUM_THREADS="$THREADS"
log() { printf '== %s\n' "$*" >&2; }
started=$(date +%s)

# --- the task set ------------------------------------------------------------
# SmolLM2's chat template as its GGUF states it, for llama-lookup (which takes
# raw text): no system message, so the template's default one. Written to a
# file with one newline more than the template's, which -f drops.
smol_chat() { # task-file prompt-file (the task's bytes as they are, as --prompt-file reads them)
  { printf '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n'
    cat "$1"
    printf '<|im_end|>\n<|im_start|>assistant\n\n'; } >"$2"
}

# One qinsd generate run: its reply to $OUT/$3 and the summary line to stdout.
# --lookup and --prompt-file are used once this qinsd has them.
HELP="$("$QINSD" generate --help)"
has_flag() { grep -q -- "$1" <<<"$HELP"; }
qins_run() { # task-file on|off out-name
  local args=("$SMOL_QINS" --temperature 0 --max-tokens "$MAX_TOKENS")
  if has_flag --prompt-file; then args+=(--prompt-file "$1")
  else local text; text="$(cat "$1"; printf x)"; args+=("${text%x}"); fi
  if has_flag --threads; then args+=(--threads "$THREADS"); fi
  local mode=$2; [ "$mode" = on ] && mode=$LOOKUP_ON
  if has_flag --lookup; then args+=(--lookup "$mode");
  elif [ "$2" = on ]; then echo "qinsd has no --lookup" >"$OUT/$3"; echo "n/a"; return; fi
  # The "on" runs log each verification pass (drafted, accepted) for the
  # projection at Phi-3.5 shape (report.py replays them).
  local filter=warn; [ "$2" = on ] && filter=qins_engine::generate=trace
  RUST_LOG=$filter "$QINSD" generate "${args[@]}" >"$OUT/$3" 2>"$OUT/$3.err" \
    || log "qinsd generate failed: $OUT/$3.err"
  grep '^\[' "$OUT/$3.err" | tail -1 || true
}

LLAMA_BIN="$PEER/llama.cpp/build/bin"
llama_run() { # task-file draft out-name: prompt and reply to $OUT/$3, timings to .err
  smol_chat "$1" "$OUT/$3.prompt"
  "$LLAMA_BIN/llama-lookup" -m "$SMOL_GGUF" -t "$THREADS" --temp 0 -n "$MAX_TOKENS" \
    -c 4096 --no-escape --spec-draft-n-max "$2" -f "$OUT/$3.prompt" >"$OUT/$3" 2>"$OUT/$3.err" \
    || log "llama-lookup failed: $OUT/$3.err"
}

# `qinsd bench --verify-tokens --json` as rows "qins KERNEL[SUFFIX], k, ms"
# (k = 1: the decode step); nothing when the run's kernel is not
# EXPECTED (the CPU lacks the one asked for: the table chose another).
verification_rows() { # json suffix [expected-kernel]
  python3 - "$@" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
if len(sys.argv) > 3 and run["kernel"] != sys.argv[3]:
    sys.exit(0)
name, v = f"qins {run['kernel']}{sys.argv[2]}", run["verification"]
print(f"{name}\t1\t{v['decode_step_ms']:.3f}")
for p in v["passes"]:
    print(f"{name}\t{p['tokens']}\t{p['ms']:.3f}")
PY
}

RAW="$OUT/tasks.tsv"
SMOL_VERIFY="$OUT/verify-smollm2.tsv"
# What a verification of k tokens costs on SmolLM2 itself (the default
# kernel): report.py replays the task runs' passes with it too, a check of
# the replay against the measured speedup.
smol_costs() {
  log "qinsd bench --verify-tokens on SmolLM2"
  "$QINSD" bench "$SMOL_QINS" --threads "$THREADS" --prompt 1 --decode 1 \
    --verify-tokens 2,4,8,16 --verify-depth 256 --verify-repetitions "$VERIFY_REPS" --json \
    2>"$OUT/bench-smollm2.err" >"$OUT/bench-smollm2.json" || { log "SmolLM2 verification bench failed"; return; }
  verification_rows "$OUT/bench-smollm2.json" " (SmolLM2)" >"$SMOL_VERIFY"
}

run_tasks() {
  : >"$RAW"
  local have_llama=1
  [ -x "$LLAMA_BIN/llama-lookup" ] || { have_llama=0; log "no $LLAMA_BIN/llama-lookup: llama.cpp columns skipped"; }
  for round in $(seq "$ROUNDS"); do
    for t in $TASKS; do
      f="$HERE/tasks/$t.txt"
      log "round $round/$ROUNDS: $t"
      # A/B alternating: off first on odd rounds, on first on even ones.
      modes=(off on); [ $((round % 2)) -eq 0 ] && modes=(on off)
      for m in "${modes[@]}"; do
        line=$(qins_run "$f" "$m" "qins-$t-$m-$round.txt")
        printf 'qins\t%s\t%s\t%s\t%s\t%s\n' "$t" "$m" "$round" "qins-$t-$m-$round.txt" "$line" >>"$RAW"
      done
      if [ $have_llama = 1 ]; then
        for m in "${modes[@]}"; do
          d=0; [ "$m" = on ] && d=$LLAMA_DRAFT
          llama_run "$f" "$d" "llama-$t-$m-$round.txt"
          printf 'llama\t%s\t%s\t%s\t%s\t-\n' "$t" "$m" "$round" "llama-$t-$m-$round.txt" >>"$RAW"
        done
      fi
    done
  done
}

# --- Phi-3.5 shape: verification cost -------------------------------------------
VERIFY="$OUT/verify.tsv"
run_phi35() {
  : >"$VERIFY"
  local qins="$PEER/phi35.qins" gguf="$PEER/phi35-q8_0.gguf"
  for k in $KERNELS; do
    log "qinsd bench --verify-tokens on phi35.qins, kernel $k"
    QINS_KERNEL=$k "$QINSD" bench "$qins" --threads "$THREADS" --prompt 1 --decode 1 \
      --verify-tokens 2,4,8,16 --verify-depth "$DEPTH" --verify-repetitions "$VERIFY_REPS" --json \
      2>"$OUT/bench-$k.err" >"$OUT/bench-$k.json" || { log "kernel $k failed (see $OUT/bench-$k.err)"; continue; }
    verification_rows "$OUT/bench-$k.json" "" "$k" >>"$VERIFY"
  done
  for build in build build-avx2; do
    local bench="$PEER/llama.cpp/$build/bin/llama-bench"
    [ -x "$bench" ] || { log "no $bench"; continue; }
    log "llama-bench $build: -p 1,2,4,8,16 -n 0 -d $DEPTH"
    "$bench" -m "$gguf" -t "$THREADS" -p 1,2,4,8,16 -n 0 -d "$DEPTH" -r "$VERIFY_REPS" -o json \
      2>"$OUT/llama-bench-$build.err" >"$OUT/llama-bench-$build.json" || { log "llama-bench $build failed"; continue; }
    python3 - "$OUT/llama-bench-$build.json" "$build" >>"$VERIFY" <<'PY'
import json, sys
for test in json.load(open(sys.argv[1])):
    k = test["n_prompt"]
    print(f"llama.cpp {sys.argv[2]}\t{k}\t{1e3 * k / test['avg_ts']:.3f}")
PY
  done
}

[ "$MODE" = phi35 ] || { run_tasks; smol_costs; }
[ "$MODE" = tasks ] || run_phi35
python3 "$HERE/report.py" --tasks "$RAW" --verify "$VERIFY" --smol-verify "$SMOL_VERIFY" \
  --threads "$THREADS" --max-tokens "$MAX_TOKENS" \
  --llama-draft "$LLAMA_DRAFT" --out "$OUT"
log "raw outputs in $OUT; $(( $(date +%s) - started )) s"
