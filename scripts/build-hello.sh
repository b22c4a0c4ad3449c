#!/usr/bin/env bash
# Build a release wheel of the demo service, examples/hello-service, with its behaviour baked in.
#
#   scripts/build-hello.sh VERSION [--latency-ms N] [--error-rate F] [--startup-seconds S] [--out DIR]
#
# Writes DIR/hello_service-VERSION-py3-none-any.whl (DIR defaults to ./dist) and prints its
# absolute path as the last line of stdout; build logs go to stderr. No network: setuptools'
# PEP 517 backend runs in-process in the python of $PYTHON (default: the repo's .venv), and
# SOURCE_DATE_EPOCH pins the wheel's timestamps, so the same version and behaviour give the
# same bytes (and gennaker bakes them once).
set -euo pipefail

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
version="" latency_ms=0 error_rate=0 startup_seconds=0 out="dist"

while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage 0 ;;
        --latency-ms) latency_ms="${2?--latency-ms needs a value}"; shift 2 ;;
        --latency-ms=*) latency_ms="${1#*=}"; shift ;;
        --error-rate) error_rate="${2?--error-rate needs a value}"; shift 2 ;;
        --error-rate=*) error_rate="${1#*=}"; shift ;;
        --startup-seconds) startup_seconds="${2?--startup-seconds needs a value}"; shift 2 ;;
        --startup-seconds=*) startup_seconds="${1#*=}"; shift ;;
        --out) out="${2?--out needs a directory}"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        -*) echo "build-hello.sh: unknown option $1" >&2; usage ;;
        *)
            if [ -n "$version" ]; then echo "build-hello.sh: one VERSION only (got $version and $1)" >&2; usage; fi
            version="$1"; shift ;;
    esac
done
[ -n "$version" ] || { echo "build-hello.sh: VERSION is required" >&2; usage; }
[ -x "$python" ] || { echo "build-hello.sh: no python at $python (run scripts/setup.sh, or set PYTHON)" >&2; exit 1; }

src="$root/examples/hello-service"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/build-hello.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# A clean copy of the source (no build leftovers), then this release's version and behaviour.
mkdir "$work/src" "$work/dist"
(cd "$src" && tar -cf - --exclude=build --exclude=dist --exclude='*.egg-info' --exclude=__pycache__ .) \
    | (cd "$work/src" && tar -xf -)

"$python" - "$work/src/src/hello_service" "$version" "$latency_ms" "$error_rate" "$startup_seconds" <<'PY'
import json, math, sys
from pathlib import Path

package, version, latency, rate, startup = sys.argv[1:]
def number(text, name, low, high=math.inf):
    try:
        value = float(text)
    except ValueError:
        sys.exit(f"build-hello.sh: {name} must be a number (got {text!r})")
    if not (low <= value <= high):
        sys.exit(f"build-hello.sh: {name} must be between {low} and {high} (got {text})")
    return int(value) if value.is_integer() and name != "--error-rate" else value
try:
    from packaging.version import InvalidVersion, Version
except ImportError:  # setuptools checks it anyway
    pass
else:
    try:
        normal = str(Version(version))
    except InvalidVersion:
        sys.exit(f"build-hello.sh: {version!r} is not a valid Python package version (PEP 440), e.g. 1.2.0")
    if normal != version:
        sys.exit(f"build-hello.sh: write the version as {normal!r} (PEP 440's normal form), not {version!r}")
behaviour = {
    "latency_ms": number(latency, "--latency-ms", 0),
    "error_rate": number(rate, "--error-rate", 0, 1),
    "startup_seconds": number(startup, "--startup-seconds", 0),
}
Path(package, "_version.py").write_text(
    '"""The release version; scripts/build-hello.sh rewrites this file for each build."""\n\n'
    f"__version__ = {version!r}\n"
)
Path(package, "behaviour.json").write_text(json.dumps(behaviour, indent=2) + "\n")
PY

# setuptools >= 70.1 builds wheels itself (older ones need the wheel package).
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-315532800}"  # 1980-01-01, the earliest a zip can hold
(
    cd "$work/src"
    "$python" -c '
import sys
try:
    from setuptools import build_meta
except ImportError:
    sys.exit("build-hello.sh: setuptools is missing from " + sys.executable + " (pip install setuptools)")
print(build_meta.build_wheel(sys.argv[1]))
' "$work/dist"
) >&2

wheel="$work/dist/hello_service-$version-py3-none-any.whl"
[ -f "$wheel" ] || { echo "build-hello.sh: the build made no $(basename "$wheel"): $(ls "$work/dist")" >&2; exit 1; }
mv -f "$wheel" "$out/"
echo "$out/$(basename "$wheel")"
