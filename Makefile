# The two commands a newcomer needs:
#   make demo   runs defacto end to end on the embedded default with the showcase example
#   make test   runs the whole test suite (what CI runs, through .ci/run)
#
# Builds share one cargo target directory outside the clone, so a second clone (or CI on
# the same machine) does not rebuild the dependency tree from scratch.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/defacto-target
CARGO ?= cargo
SHELL := /bin/bash
EXAMPLE ?= examples/showcase
# The demo works on a scratch copy of the example's definitions, so each run starts from an
# empty lake and catalog (local Delta lake + SQLite, the embedded default).
DEMO_DIR ?= .defacto-demo
DEFACTO = $(CARGO_TARGET_DIR)/debug/defacto

.PHONY: demo test build bench fmt lint

build:
	$(CARGO) build --workspace --bins

demo: build
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	cp -r $(EXAMPLE)/entities $(EXAMPLE)/sources $(EXAMPLE)/schemas $(DEMO_DIR)/
	$(DEFACTO) --config $(DEMO_DIR) validate
	for f in $(EXAMPLE)/data/*.jsonl; do \
	  $(DEFACTO) --config $(DEMO_DIR) ingest --source $$(basename $$f .jsonl) $$f || exit 1; \
	done
	$(DEFACTO) --config $(DEMO_DIR) normalize
	$(DEFACTO) --config $(DEMO_DIR) build --as-of 2024-05-01T00:00:00Z
	$(DEFACTO) --config $(DEMO_DIR) tick --as-of 2024-05-15T00:00:00Z
	$(DEFACTO) --config $(DEMO_DIR) status
	for e in customer subscription order; do $(DEFACTO) --config $(DEMO_DIR) table $$e || exit 1; done
	$(DEFACTO) --config $(DEMO_DIR) export --format warehouse
	$(DEFACTO) --config $(DEMO_DIR) export --format parquet --history --out $(DEMO_DIR)/export
	$(DEFACTO) --config $(DEMO_DIR) query "SELECT customer_state, count(*) AS customers FROM customer GROUP BY customer_state ORDER BY customer_state"

# Library, binary and integration tests of every crate (doc tests and benchmarks excluded),
# then the orchestration and packaging tests in the real Airflow, Dagster, hadolint and
# Kubernetes schemas (dags/tests/run.sh keeps its own pinned venv), then the Python API's
# tests (python/tests/run.sh builds the extension module with maturin in its own pinned venv;
# cargo cannot link a test binary of an extension module, hence the --exclude), then one
# closing line with the totals.
test:
	@log=$$(mktemp); set -o pipefail; \
	$(CARGO) test --workspace --exclude defacto-python --lib --bins --tests --no-fail-fast 2>&1 | tee $$log; status=$$?; \
	DEFACTO_BIN=$(DEFACTO) dags/tests/run.sh 2>&1 | tee -a $$log || status=1; \
	DEFACTO_BIN=$(DEFACTO) python/tests/run.sh 2>&1 | tee -a $$log || status=1; \
	awk '/^test result:/ { passed += $$4; failed += $$6 } \
	     /^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$$/ { passed += $$1; failed += $$3 } \
	     END { printf "%d passed, %d failed\n", passed, failed }' $$log; \
	rm -f $$log; exit $$status

bench:
	$(CARGO) bench -p defacto-core
	$(CARGO) bench -p defacto-jobs --bench pipeline

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
