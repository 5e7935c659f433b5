# The two commands a newcomer needs:
#   make demo   runs defacto end to end on the embedded default with the showcase example
#   make test   runs the whole test suite (what CI runs, through .ci/run)
#
# Builds share one cargo target directory outside the clone, so a second clone (or CI on
# the same machine) does not rebuild the dependency tree from scratch.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/defacto-target
CARGO ?= cargo
EXAMPLE ?= examples/showcase

.PHONY: demo test build bench fmt lint

build:
	$(CARGO) build --workspace --bins

demo: build
	$(CARGO_TARGET_DIR)/debug/defacto --config $(EXAMPLE) validate

test:
	$(CARGO) test --workspace --no-fail-fast

bench:
	$(CARGO) bench -p defacto-core

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
