#!/usr/bin/env bash
# The main job: Airflow (standalone: scheduler, DAG processor, triggerer, API server + UI)
# with gennaker installed and the pipelines in dags/pipelines/ loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
scripts/setup.sh

export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow}"
# standalone starts its components as `airflow ...` from PATH
export PATH="$ROOT/.venv/bin:$PATH"
PORT="${GENNAKER_DEMO_PORT:-8080}"
mkdir -p "$AIRFLOW_HOME"
# shellcheck source=scripts/airflow-env.sh
source scripts/airflow-env.sh "$ROOT" "$PORT"

echo "==> preparing Airflow's database in $AIRFLOW_HOME"
.venv/bin/airflow db migrate >/dev/null

cat <<MSG

  gennaker demo
  -------------
  Airflow UI:   http://localhost:$PORT
  Login:        admin / admin      (read-only user: viewer / viewer)
  Pipelines:    $ROOT/dags/pipelines   (new or changed specs appear within seconds)
  Validate:     .venv/bin/gennaker validate dags/pipelines

  Stop with Ctrl-C.

MSG
exec .venv/bin/airflow standalone
