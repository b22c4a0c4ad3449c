#!/usr/bin/env bash
# The main job: Airflow (standalone: scheduler, DAG processor, triggerer, API server + UI)
# with gennaker installed and the pipelines in dags/pipelines/ loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow}"
if [ "${1:-}" = "stop" ]; then
    # Stop the local provider's supervisors (and so the instances) and load balancers of the demo.
    exec .venv/bin/gennaker local-stop --home "${GENNAKER_HOME:-$AIRFLOW_HOME/gennaker}"
fi
# The core is enough for the local provider; GENNAKER_EXTRAS (e.g. aws,gcp) adds clouds' providers.
scripts/setup.sh "${GENNAKER_EXTRAS:-}"

# standalone starts its components as `airflow ...` from PATH
export PATH="$ROOT/.venv/bin:$PATH"
PORT="${GENNAKER_DEMO_PORT:-8080}"
mkdir -p "$AIRFLOW_HOME"
# shellcheck source=scripts/airflow-env.sh
source scripts/airflow-env.sh "$ROOT" "$PORT"

# The local provider's home: images, server groups, load balancers, and the demo's artifacts.
export GENNAKER_HOME="${GENNAKER_HOME:-$AIRFLOW_HOME/gennaker}"
export GENNAKER_ARTIFACTS="${GENNAKER_ARTIFACTS:-$GENNAKER_HOME/artifacts}"
echo "==> building the demo service's releases into $GENNAKER_ARTIFACTS"
for version in 1.0.0 1.1.0 2.0.0; do
    if [ ! -f "$GENNAKER_ARTIFACTS/hello_service-$version-py3-none-any.whl" ]; then
        scripts/build-hello.sh "$version" --out "$GENNAKER_ARTIFACTS" >/dev/null 2>"$AIRFLOW_HOME/build-hello.log" ||
            { cat "$AIRFLOW_HOME/build-hello.log" >&2; exit 1; }
    fi
    # The bad build of each version (hello.deploy-prod with slow: true): 80 ms slower, 20% errors.
    if [ ! -f "$GENNAKER_ARTIFACTS/slow/hello_service-$version-py3-none-any.whl" ]; then
        scripts/build-hello.sh "$version" --latency-ms 80 --error-rate 0.2 --out "$GENNAKER_ARTIFACTS/slow" \
            >/dev/null 2>"$AIRFLOW_HOME/build-hello.log" || { cat "$AIRFLOW_HOME/build-hello.log" >&2; exit 1; }
    fi
done

echo "==> preparing Airflow's database in $AIRFLOW_HOME"
.venv/bin/airflow db migrate >/dev/null
# gennaker's shared tables (cluster locks, the Clusters page's audit trail) in that same database.
.venv/bin/gennaker db migrate

cat <<MSG

  gennaker demo
  -------------
  Airflow UI:   http://localhost:$PORT
  Login:        admin / admin      (read-only user: viewer / viewer)
  Pipelines:    $ROOT/dags/pipelines   (new or changed specs appear within seconds)
  Validate:     .venv/bin/gennaker validate dags/pipelines

  The demo application answers at http://127.0.0.1:8088 once the pipeline
  hello.deploy-prod has run: trigger it with a version (1.0.0, 1.1.0, 2.0.0), then
  again with another one, and watch  curl -s http://127.0.0.1:8088/version
  (the README walks through it). Its processes keep running after Ctrl-C, as a
  cloud's would: stop them with  scripts/demo.sh stop

  Stop with Ctrl-C.

MSG
# Steady traffic on the demo application (http://127.0.0.1:8088) while the demo runs: the canary judges what
# the load balancer sees, and the load balancer's metrics show each server group's share.
.venv/bin/python scripts/demo-traffic.py http://127.0.0.1:8088/ >"$AIRFLOW_HOME/demo-traffic.log" 2>&1 &
traffic=$!
trap 'kill "$traffic" 2>/dev/null || true' EXIT INT TERM
.venv/bin/airflow standalone
