# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo

.PHONY: install demo test test-k8s-real lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: the events ETL (Spark) backfilled over a week of generated raw data.
demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO) && cp -r examples/events/. $(DEMO)/
	cd $(DEMO) && ../$(BIN)/python generate.py data/landing --start 2024-01-01 --days 8
	# Small JVMs start faster: fine for a demo's short Spark jobs, not for production ones.
	cd $(DEMO) && SPARK_SUBMIT_OPTS="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC" \
	  ../$(BIN)/reflow backfill events --start 2024-01-01 --end 2024-01-07 --wait
	cd $(DEMO) && ../$(BIN)/python summary.py data/warehouse --start 2024-01-01 --end 2024-01-07
	@echo "Outputs: $(DEMO)/data/warehouse (events, quarantine, daily_metrics; Parquet by date)"
	@echo "Logs:    $(DEMO)/.reflow/logs, or: cd $(DEMO) && ../$(BIN)/reflow logs events 2024-01-03 ingest"

lint: install
	$(BIN)/ruff check --no-cache src tests bench examples
	$(BIN)/ruff format --no-cache --check src tests bench examples
	$(BIN)/lint-imports
	$(BIN)/mypy

## Lint, type-check, then every test tier (SQLite and PostgreSQL, real processes; one pytest
## worker per core); the kubernetes tests run on the real local cluster too when it is
## built on the machine (started for them if it is stopped).
test: lint
	$(BIN)/pytest -n auto
	@$(MAKE) --no-print-directory test-k8s-real

## The kubernetes tests against the local cluster (make k8s-cluster) when it is built here:
## started for them if it is stopped. The last line says whether they ran.
test-k8s-real: install
	@tests/k8s/cluster/real-tests.sh $(BIN)/python

bench: install
	$(BIN)/python bench/backfill_noop.py
	$(BIN)/python bench/tick_history.py
	$(BIN)/python bench/tick_active.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/user_path.py
	$(BIN)/python bench/many_pipelines.py
	$(BIN)/python bench/web_grid.py
	$(BIN)/python bench/web_overview.py
	$(BIN)/python bench/notify_latency.py
	$(BIN)/python bench/k8s_pods.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache

## A real single-node Kubernetes (v1.20) for the tests, as root: built once (16 minutes
## here, cached in ~/.cache/reflow-k8s), then started in about a minute; prints how long
## each part took. See "A real Kubernetes cluster for the tests" in README.md.
.PHONY: k8s-cluster k8s-cluster-stop
k8s-cluster: install
	$(BIN)/python tests/k8s/cluster/cluster.py up

## Stops every process the cluster started and removes what it left (safe to repeat).
k8s-cluster-stop:
	$(PYTHON) tests/k8s/cluster/cluster.py down
