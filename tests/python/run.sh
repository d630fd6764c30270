#!/usr/bin/env bash
# The Python checks (standard library only): the launchd plist template and
# what `qins service install --dry-run` renders from it. Prints a cargo-style
# result line so scripts/test.sh can count these tests too.
set -euo pipefail
cd "$(dirname "$0")/../.."
export QINS_BIN="${QINS_BIN:-${CARGO_TARGET_DIR:-target}/release/qins}"
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
status=0
python3 -m unittest discover -s tests/python -v 2>&1 | tee "$OUT" || status=$?
ran=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\}.*/\1/p' "$OUT")
failed=$( (grep -Eo '(failures|errors)=[0-9]+' "$OUT" || true) | awk -F= '{s += $2} END {print s + 0}')
skipped=$( (grep -Eo 'skipped=[0-9]+' "$OUT" || true) | awk -F= '{s += $2} END {print s + 0}')
echo "test result: python. $((ran - failed - skipped)) passed; $failed failed; $skipped ignored"
exit "$status"
