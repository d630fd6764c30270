#!/usr/bin/env bash
# Measures QINS weight error, file size and conversion cost on SmolLM2 for
# each granularity and clip setting (the table in TECHNICAL_SPEC.md).
# Usage: scripts/codec-sweep.sh [QINSD_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-fixtures.sh >/dev/null
QINSD="${1:-${CARGO_TARGET_DIR:-target}/release/qinsd}"
GGUF="${QINS_FIXTURES:-$HOME/.cache/qins/fixtures}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
echo "| granularity | clip | prune | compress | file MB | bits/weight | rel. RMS err | mean rel. err | code entropy | time s | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
run() { # granularity clip prune compress
    local args=(--granularity "$1" --clip "$2" --json)
    [ "$3" != off ] && args+=(--prune-below "$3")
    [ "$4" = zstd ] && args+=(--compress)
    /usr/bin/time -f '%M' -o "$OUT/rss" "$QINSD" convert "$GGUF" -o "$OUT/m.qins" "${args[@]}" >"$OUT/r.json"
    python3 - "$OUT/r.json" "$OUT/rss" "$@" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rss = int(open(sys.argv[2]).read().split()[-1]) / 1024
g, clip, prune, comp = sys.argv[3:7]
m = r["quality"]["model"]
print(f"| {g} | {clip} | {prune} | {comp} | {r['file_bytes']/1e6:.1f} | {r['bits_per_weight']:.2f} | "
      f"{m['rel_rms_err']*100:.3f}% | {m['mean_rel_err']*100:.3f}% | {m['code_entropy_bits']:.2f} | {r['seconds']:.1f} | {rss:.0f} |")
PY
}
for g in per-row per-tensor; do
    for clip in 0 0.0001 0.001 0.01 0.05; do
        run "$g" "$clip" off none
    done
done
run per-row 0.001 off zstd
run per-tensor 0.001 off zstd
run per-row 0.001 0.001 none
