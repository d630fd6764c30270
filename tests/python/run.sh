#!/usr/bin/env bash
# The Python checks: the launchd plist template and what `qins service
# install --dry-run` renders from it (standard library only), the
# OpenAI-compatible API of qins-web through the official `openai` package,
# and qinsd's socket through a stock grpcio client (packages pinned in
# requirements.txt, installed into a venv cached at
# ~/.cache/qins/venv-tests). Prints a cargo-style result line so
# scripts/test.sh can count these tests too.
set -euo pipefail
cd "$(dirname "$0")/../.."
export QINS_BIN="${QINS_BIN:-${CARGO_TARGET_DIR:-target}/release/qins}"
export QINS_BIN_DIR="${QINS_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"

# The venv: made once, reinstalled only when requirements.txt changes. When
# that fails, the tests still run and test_openai_api says what is missing.
VENV="${QINS_TEST_VENV:-$HOME/.cache/qins/venv-tests}"
REQS=tests/python/requirements.txt
PYTHON=python3
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
    PYTHON="$VENV/bin/python"
elif { [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; } &&
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"; then
    echo "$want" >"$VENV/.requirements.sha256"
    PYTHON="$VENV/bin/python"
else
    echo "python tests: could not set up $VENV from $REQS" >&2
    [ ! -x "$VENV/bin/python" ] || PYTHON="$VENV/bin/python"
fi
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
status=0
"$PYTHON" -m unittest discover -s tests/python -v 2>&1 | tee "$OUT" || status=$?
ran=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\}.*/\1/p' "$OUT")
failed=$( (grep -Eo '(failures|errors)=[0-9]+' "$OUT" || true) | awk -F= '{s += $2} END {print s + 0}')
skipped=$( (grep -Eo 'skipped=[0-9]+' "$OUT" || true) | awk -F= '{s += $2} END {print s + 0}')
echo "test result: python. $((ran - failed - skipped)) passed; $failed failed; $skipped ignored"
exit "$status"
