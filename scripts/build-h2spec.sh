#!/usr/bin/env bash
# Build h2spec (the HTTP/2 conformance suite) from the source in ../shared/third_party/h2spec with
# ../shared/tools/build-h2spec, adding the small command line in scripts/h2spec/ that the kept
# source lacks. Idempotent: prints the binary's path, building it only once. Exits 0 without
# output when ../shared is absent (the h2spec test then skips and says why).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${SIDECAR_SHARED:-$here/../../shared}
[ -d "$shared" ] || shared=$here/../../../shared
if [ ! -x "$shared/tools/build-h2spec" ] || [ ! -d "$shared/third_party/h2spec" ]; then
  exit 0
fi
export ANCHORS=${ANCHORS:-/tmp/anchors}
if [ -x "$ANCHORS/h2spec" ] && [ -z "${H2SPEC_REBUILD:-}" ]; then echo "$ANCHORS/h2spec"; exit 0; fi
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r "$shared/third_party/h2spec/." "$src/"
mkdir -p "$src/cmd/h2spec"
cp "$here/h2spec/main.go" "$src/cmd/h2spec/main.go"
H2SPEC_SRC="$src" bash "$shared/tools/build-h2spec" | tail -1
