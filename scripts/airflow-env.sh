# Sourced by demo.sh and the integration tests' docs: Airflow settings for running gennaker locally.
# Usage: source scripts/airflow-env.sh REPO_ROOT PORT   (AIRFLOW_HOME must be set)
_root="$1"; _port="${2:-8080}"
export AIRFLOW__CORE__DAGS_FOLDER="$_root/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/passwords.json"
echo '{"admin": "admin", "viewer": "viewer"}' > "$AIRFLOW_HOME/passwords.json"
export AIRFLOW__API__PORT="$_port"
export AIRFLOW__API__BASE_URL="http://localhost:$_port"
# New spec files show up within seconds: re-parse the DAG file and re-list the folder often.
export AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=5
# Re-listing the folder clears import errors of files Airflow did not list itself (our specs) until the
# next parse, and only a re-list clears the error of a fixed spec: once a minute is the compromise.
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=60
export AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL=5
export GENNAKER_TEMPLATE_PATH="$_root/templates"
# gennaker's cluster locks and audit trail live in Airflow's database (GENNAKER_STATE_DB unset): after
# `airflow db migrate`, run `gennaker db migrate` (demo.sh does).
