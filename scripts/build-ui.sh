#!/usr/bin/env bash
# Build the Clusters page (plugin/gennaker/web/ui, TypeScript + React) into the bundle that ships in the
# Python package: plugin/gennaker/web/static/clusters.js. Commit the bundle with its sources.
#
# Usage: scripts/build-ui.sh            type-check, build, print the bundle's size
#        scripts/build-ui.sh --check    build into a temporary folder; fail if it differs from the committed one
#
# Needs Node.js 20.19+ and npm (only to build: users of the package need neither). Dependencies are
# installed with `npm ci` from the pinned package-lock.json. Any warning of the type check or the build
# fails it. tests/browser/test_bundle.py fails when the bundle's banner does not carry the hash of the
# sources as they are (someone changed the page and did not run this).
set -euo pipefail
cd "$(dirname "$0")/.."
UI=plugin/gennaker/web/ui
BUNDLE=plugin/gennaker/web/static/clusters.js

command -v npm >/dev/null 2>&1 || { echo "build-ui: needs Node.js (20.19+) and npm" >&2; exit 2; }
cd "$UI"
# npm ci only when node_modules is missing or older than the lock file (it deletes and reinstalls everything).
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "==> npm ci ($UI)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "==> type check"
./node_modules/.bin/tsc --noEmit -p tsconfig.json

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "==> vite build"
# logLevel "warn" (vite.config.ts): the build prints nothing unless something is wrong.
GENNAKER_UI_OUT="$out" ./node_modules/.bin/vite build >"$out/build.log" 2>&1 || { cat "$out/build.log" >&2; exit 1; }
if [ -s "$out/build.log" ]; then
  cat "$out/build.log" >&2
  echo "build-ui: the build printed warnings (above): fix them" >&2
  exit 1
fi
cd - >/dev/null

if [ "${1:-}" = "--check" ]; then
  if cmp -s "$out/clusters.js" "$BUNDLE"; then
    echo "$BUNDLE is what the sources build"
  else
    echo "build-ui: $BUNDLE differs from what the sources build: run scripts/build-ui.sh and commit" >&2
    exit 1
  fi
else
  cp "$out/clusters.js" "$BUNDLE"
fi
size=$(wc -c <"$BUNDLE")
gz=$(gzip -9 -c "$BUNDLE" | wc -c)
echo "==> $BUNDLE: $size bytes ($gz gzipped)"
