# mutualbench: one command per job. `test`, `replicate` and `bench` install first when .venv is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,docs,wandb,slurm
# Study data: by default the spec's own data set ([study] data: cifar10 downloads it);
# offline, point at a local copy of it (a folder or archive).
MUTUALBENCH_DATA ?=

.PHONY: install test replicate smoke-study bench bench-smoke gpu-prep gpu-import docs lint clean

$(BIN)/mutualbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

install: $(BIN)/mutualbench

# Tests run in TEST_WORKERS processes (pytest-xdist; `auto`: one per core, `0`: in this one),
# a test file per worker so that module fixtures are built once.
TEST_WORKERS ?= auto
test: $(BIN)/mutualbench
	$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

# The blog's study: profile `full` on a GPU, `cpu` otherwise (see replication/seed_blog.toml),
# into runs/seed_blog/<profile>; ends with the table, the plots and a comparison with the
# stored results in results/seed_blog/<profile> when there are some.
# Any study: `make replicate SPEC=replication/<study>.toml [PROFILE=...] [ARGS="--dry-run"]`.
SPEC ?= replication/seed_blog.toml
PROFILE ?=
ARGS ?=
replicate: $(BIN)/mutualbench
	$(BIN)/mutualbench replicate $(SPEC) $(if $(MUTUALBENCH_DATA),--data "$(MUTUALBENCH_DATA)") $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

# The CI regression check: the smoke profile of every study in SMOKE_STUDIES (float64, the
# exact tier) on the shared CIFAR-10 copy, each compared run by run with its stored set in
# results/<study>/smoke (`compare` prints one line: reproduced exactly, or the first differences).
# The studies run side by side (a float64 run trains on one thread), then are compared in order.
# SMOKE_SEEDS: how many of the stored sets' seeds to rerun, 0..N-1. CI reruns seed 0 (every
# arm and ablation, so every code path the smoke sets hold, at half the time); the stored sets
# hold seeds 0 and 1, and `make smoke-study SMOKE_SEEDS=2` checks both.
SHARED_CIFAR ?= ../shared/data/cifar10-jpeg75.tar.gz
SMOKE_STUDIES ?= seed_blog dml_cifar10 online_kd
SMOKE_SEEDS ?= 1
smoke-study: $(BIN)/mutualbench
	@if [ -f "$(SHARED_CIFAR)" ]; then \
	  mkdir -p runs && for s in $(SMOKE_STUDIES); do \
	    rm -rf runs/ci-smoke-$$s runs/ci-smoke-$$s.rc && \
	    { $(BIN)/mutualbench replicate replication/$$s.toml --profile smoke --seeds $(SMOKE_SEEDS) --data "$(SHARED_CIFAR)" --out runs/ci-smoke-$$s --quiet --against results/$$s/smoke > runs/ci-smoke-$$s.log 2>&1; echo $$? > runs/ci-smoke-$$s.rc; } & \
	  done; wait; \
	  for s in $(SMOKE_STUDIES); do \
	    [ "$$(cat runs/ci-smoke-$$s.rc)" = 0 ] || { cat runs/ci-smoke-$$s.log; exit 1; } ; \
	    $(BIN)/mutualbench compare runs/ci-smoke-$$s --against results/$$s/smoke || exit 1; \
	  done; \
	else echo "smoke-study: $(SHARED_CIFAR) not found, skipped"; fi

# CPU benchmarks; ratios against baselines measured in the same run, with machine info.
# BENCH: which of them (default all). `epoch` (whole epochs per method and per way) is filed
# under the kind of CPU it ran on: results/bench/<cpu kind>.{json,md}, e.g. amd-epyc-avx2.md.
BENCH ?= loader cohort conv_grouping epoch
bench: $(BIN)/mutualbench
	@mkdir -p results/bench
	@for b in $(filter-out epoch,$(BENCH)); do \
	  $(BIN)/python -m pytest benchmarks/test_bench_$$b.py -q -p no:cacheprovider --benchmark-json results/bench/$$b-cpu.json || exit 1; \
	  $(BIN)/python benchmarks/report.py results/bench/$$b-cpu.json > results/bench/$$b-cpu.md; \
	  cat results/bench/$$b-cpu.md; \
	done
	@if [ -n "$(filter epoch,$(BENCH))" ]; then \
	  kind=$$($(BIN)/python -c 'from mutualbench.core.envinfo import cpu_slug; print(cpu_slug())') || exit 1; \
	  $(BIN)/python -m pytest benchmarks/test_bench_epoch.py -q -p no:cacheprovider --benchmark-json results/bench/$$kind.json || exit 1; \
	  $(BIN)/python benchmarks/epoch_report.py results/bench/$$kind.json > results/bench/$$kind.md || exit 1; \
	  cat results/bench/$$kind.md; \
	fi

# CI: every benchmark once on small data, no timing claims.
bench-smoke: $(BIN)/mutualbench
	MUTUALBENCH_BENCH_SMOKE=1 $(BIN)/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable

# A remote GPU machine (docs/clusters.md, "On a GPU machine or cluster node"): `make gpu-prep` puts the
# data archive and the commit in .gpu/ (ignored), to be copied there with the tree; there,
# `bash benchmarks/gpu_session.sh` runs under the machine's time limit; `make gpu-import
# FROM=<folder its output files were copied back into>` stores the results.
gpu-prep:
	@test -f "$(SHARED_CIFAR)" || { echo "gpu-prep: $(SHARED_CIFAR) not found"; exit 2; }
	mkdir -p .gpu && cp "$(SHARED_CIFAR)" .gpu/
	@echo "$$(git rev-parse HEAD)$$(git diff --quiet HEAD -- src replication benchmarks || echo +dirty)" > .gpu/COMMIT
	@echo "gpu-prep: .gpu/ holds $$(ls .gpu | tr '\n' ' ')(commit $$(cat .gpu/COMMIT))"

gpu-import: $(BIN)/mutualbench
	@test -n "$(FROM)" || { echo "gpu-import: FROM=<folder with gpu-check.md / study.tar.gz> is required"; exit 2; }
	$(BIN)/python replication/import_gpu_session.py "$(FROM)"

# The documentation site (mkdocs.yml): the repository's Markdown files (tracked, or new and not
# ignored) staged under build/docs-src as the code host shows them, built strictly into build/site.
docs: $(BIN)/mutualbench
	@rm -rf build/docs-src && mkdir -p build/docs-src
	@git ls-files -z --cached --others --exclude-standard -- ':!:*.pt' | xargs -0 cp --parents -t build/docs-src
	@out=$$($(BIN)/mkdocs build --strict 2>&1) || { echo "$$out" | grep -v '^INFO'; echo "docs: mkdocs build --strict failed"; exit 1; }
	@echo "docs: build/site/index.html"

lint: $(BIN)/mutualbench
	$(BIN)/ruff check src tests benchmarks replication

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
