#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, DAG generation, integration on a real Airflow).
set -euo pipefail
cd "$(dirname "$0")/.."
# GENNAKER_EXTRAS (e.g. aws): the clouds whose tests to run too (make test EXTRAS=aws).
scripts/setup.sh "test${GENNAKER_EXTRAS:+,$GENNAKER_EXTRAS}"
mkdir -p tests/artifacts
echo "==> ruff, mypy"
.venv/bin/ruff check plugin dags tests
.venv/bin/ruff format --check plugin dags tests
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
