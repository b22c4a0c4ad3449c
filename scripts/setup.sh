#!/usr/bin/env bash
# Create .venv and install gennaker (editable) with the pinned versions in requirements-lock.txt.
# Usage: scripts/setup.sh [extras]   extras, comma-separated: test (the test tools), and the clouds
#        aws, gcp, jenkins or all (their Airflow providers); e.g. scripts/setup.sh test,aws
# With none, only the core: Airflow, the local provider, the Clusters page (what `make demo` needs).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-}"
PY="${PYTHON:-python3}"
SPEC="."
[ -n "$EXTRA" ] && SPEC=".[$EXTRA]"

if ! command -v uv >/dev/null 2>&1 && ! "$PY" -m uv --version >/dev/null 2>&1; then
  echo "==> installing uv (a fast pip) for this user"
  "$PY" -m pip install --quiet --user uv 2>/dev/null || "$PY" -m pip install --quiet uv
fi
UV="uv"
command -v uv >/dev/null 2>&1 || UV="$PY -m uv"

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  $UV venv --quiet --python "$PY" .venv
fi
echo "==> installing gennaker $SPEC (pinned by requirements-lock.txt)"
# setuptools: scripts/build-hello.sh builds the demo service's releases with it (gennaker itself needs none).
$UV pip install --quiet --python .venv/bin/python -c requirements-lock.txt -e "$SPEC" setuptools

# The Clusters page's browser tests drive Debian's Chromium with Playwright (Playwright's own browser
# download does not work here): install it once for the test extra.
if [[ ",$EXTRA," == *,test,* ]] && [ ! -x "${GENNAKER_CHROMIUM:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else SUDO="none"; fi
  if [ "$SUDO" != "none" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium (Debian package) for the browser tests"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }
    then
      echo "==> WARNING: could not install chromium: the browser tests will fail" >&2
    fi
  else
    echo "==> WARNING: no chromium at ${GENNAKER_CHROMIUM:-/usr/bin/chromium}: the browser tests will fail" \
         "(install Debian's chromium, or set GENNAKER_CHROMIUM)" >&2
  fi
fi

# The build leaves plugin/gennaker.egg-info behind; on sys.path (editable install) it would make
# Airflow see the plugin's entry point twice ("Plugin 'gennaker' already registered").
rm -rf plugin/*.egg-info
