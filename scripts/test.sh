#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, DAG generation, integration on a real Airflow).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
mkdir -p tests/artifacts
echo "==> ruff, mypy"
.venv/bin/ruff check plugin dags tests
.venv/bin/ruff format --check plugin dags tests
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
