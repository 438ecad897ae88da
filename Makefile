# mutualbench: one command per job. `test`, `replicate` and `bench` install first when .venv is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,wandb,slurm
# Study runs: data source (cifar10 downloads; point at a local copy offline) and output folder.
MUTUALBENCH_DATA ?= cifar10
RUNS   ?= runs

.PHONY: install test replicate bench bench-smoke lint clean

$(BIN)/mutualbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

install: $(BIN)/mutualbench

test: $(BIN)/mutualbench
	$(BIN)/python -m pytest -q

# The blog's study: profile `full` on a GPU, `cpu` otherwise (see replication/seed_blog.toml).
replicate: $(BIN)/mutualbench
	$(BIN)/mutualbench replicate replication/seed_blog.toml --data "$(MUTUALBENCH_DATA)" --out "$(RUNS)/seed_blog"

bench: $(BIN)/mutualbench
	@mkdir -p results/bench
	$(BIN)/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-json results/bench/loader-cpu.json
	$(BIN)/python benchmarks/report.py results/bench/loader-cpu.json > results/bench/loader-cpu.md
	@cat results/bench/loader-cpu.md

# CI: every benchmark once on small data, no timing claims.
bench-smoke: $(BIN)/mutualbench
	MUTUALBENCH_BENCH_SMOKE=1 $(BIN)/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable

lint: $(BIN)/mutualbench
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
