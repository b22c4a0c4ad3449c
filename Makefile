# The two commands of the README.
.PHONY: demo test bench schema lint

# Cloud providers to install besides the core, comma-separated (aws, gcp, jenkins, all):
# make demo EXTRAS=aws. See README "Install".
EXTRAS ?=

demo:            ## set up and run Airflow with gennaker and the example pipelines
	GENNAKER_EXTRAS="$(EXTRAS)" scripts/demo.sh

test:            ## set up and run every test (unit, DAG generation, integration on a real Airflow)
	GENNAKER_EXTRAS="$(EXTRAS)" scripts/test.sh

bench:           ## the parse benchmark (prints ratios; see README "Performance")
	.venv/bin/python tests/benchmarks/parse.py

schema:          ## regenerate the JSON Schema of the spec language
	.venv/bin/gennaker schema -o docs/schema/pipeline.schema.json
