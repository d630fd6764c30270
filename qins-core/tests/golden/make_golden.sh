#!/usr/bin/env bash
# Regenerates the golden reference logits beside this script with Hugging Face
# transformers (CPU, float32, eager attention).
#
#   qins-core/tests/golden/make_golden.sh                 # phi3-tiny.json, llama-tiny.json
#   qins-core/tests/golden/make_golden.sh --smollm2 PATH.gguf   # also smollm2.json
#   qins-core/tests/golden/make_golden.sh --raw           # environment check only: run
#                                                     # transformers on the raw tiny models
#
# The virtual environment (~6 GB with torch's CUDA libraries) lives in
# $QINS_GOLDEN_VENV (default ~/.cache/qins/venv-golden), the intermediate
# models in ~/.cache/qins/golden-work: nothing big goes into the repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="${QINS_GOLDEN_VENV:-$HOME/.cache/qins/venv-golden}"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"

(cd "$root" && cargo build --release --workspace --bins)
target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

exec "$venv/bin/python" "$here/make_golden.py" --qinsd "$target_dir/release/qinsd" "$@"
