# Two commands a new user needs: `make run` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TEST_STAMP := $(VENV)/.installed-test-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
WORKDIR ?= runs/quickstart

.PHONY: run test test-fast venv clean

# `make run` installs the package and what the main job needs, nothing more.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	rm -f $(VENV)/.installed-* && touch $@

# The tests add the [test] extra (pytest, notebooks, torch + transformers to load exports)
# and compile TPU programs ahead of time (tests/integration/test_aot.py): libtpu, pinned to the
# installed jax by jax's own [tpu] extra.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,tpu]'
	touch $@

venv: $(STAMP)

# glibc.malloc.hugetlb=1: XLA:CPU's large temporaries on transparent huge pages (faster CPU
# steps, docs/performance.md); glibc reads it only at process start, so it is set here.
HUGEPAGES := GLIBC_TUNABLES=$(if $(GLIBC_TUNABLES),$(GLIBC_TUNABLES):)glibc.malloc.hugetlb=1

# The main job: a small model trained with WSD-S on the bundled corpus; prints the table of
# decayed checkpoints at the end. Resumes if WORKDIR already holds the run.
run: $(STAMP)
	$(HUGEPAGES) $(PY) -m wsdjax.train --config configs/default.py --workdir $(WORKDIR)

# The whole test suite (what CI runs), on 2 workers (tests are grouped by file, so each
# file's shared fixtures run once), with huge pages as `make run` has them.
TEST_ENV := $(HUGEPAGES)
# --durations: the slowest tests, to keep the suite inside its 15 minutes on 2 cores.
test: $(TEST_STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadfile --durations=12

# The unit tests: tests/unit/ less the few marked integration (no command in a subprocess,
# no training run, no notebook). tests/integration/ is the rest of `make test`.
test-fast: $(TEST_STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadfile -m "not integration" tests/unit

clean:
	rm -rf $(VENV) runs
