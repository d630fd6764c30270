#!/usr/bin/env bash
# Refreshes the page's vendored JavaScript from the npm registry: marked (the
# Markdown parser) and DOMPurify (the HTML sanitizer), their browser builds
# unmodified, with their licenses. `npm pack` checks each tarball against the
# registry's integrity hash. Pass versions to move to others:
#
#   qins-web/assets/vendor/update.sh [MARKED_VERSION [DOMPURIFY_VERSION]]
#
# then update the versions in README.md beside this script and run the
# browser test (qins-web/tests/browser/run.sh).
set -euo pipefail
MARKED="${1:-18.2.1}"
DOMPURIFY="${2:-3.4.18}"
HERE="$(cd "$(dirname "$0")" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
npm pack --silent "marked@$MARKED" "dompurify@$DOMPURIFY" >/dev/null
mkdir marked dompurify
tar xzf "marked-$MARKED.tgz" -C marked
tar xzf "dompurify-$DOMPURIFY.tgz" -C dompurify
cp marked/package/lib/marked.umd.js "$HERE/marked.umd.js"
cp marked/package/LICENSE "$HERE/marked.LICENSE"
cp dompurify/package/dist/purify.min.js "$HERE/purify.min.js"
cp dompurify/package/LICENSE "$HERE/purify.LICENSE"
(cd "$HERE" && sha256sum marked.umd.js purify.min.js)
