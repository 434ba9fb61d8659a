# make demo: create .venv, install cmtnet, run the main job on the embedded default dataset.
# make test: the same set-up, then the test suite (ours and timm's own model tests on our models, in one run spread
# over the cores), printing its 15 slowest tests, then the docs build.
# make detect-demo: detection on the embedded detection set, from the classification demo's weights.
# make segment-demo: segmentation on the embedded segmentation set, from the classification demo's weights.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TIMM_VERSION := $(shell sed -n 's/^timm==//p' constraints.txt)
TIMM_TESTS := $(VENV)/timm-tests-$(TIMM_VERSION)
# one pytest-xdist worker per CPU and one torch thread each (the subprocesses that tests start inherit it), so
# that the workers do not oversubscribe the cores
JOBS ?= logical
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(JOBS) --durations=15

.PHONY: demo detect-demo segment-demo test test-ours test-timm docs info clean

# pip byte-compiles what it installs one file at a time; compileall does the same on every core instead (pip,
# like compileall, goes past the few files that do not compile on this Python: torch ships one for 3.12), less
# the packages' own test folders, which nothing imports
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt \
		-e '.[test,detection,export,segmentation,serve,serve-compare,docs]'
	$(BIN)/python -m compileall -qq -j 0 -x '/tests?/' $(VENV)/lib || true
	touch $@

demo: $(STAMP)
	$(BIN)/cmtnet info
	rm -rf runs/demo
	$(BIN)/cmtnet train --config configs/demo.yaml
	$(BIN)/cmtnet eval --checkpoint runs/demo/model_ema.safetensors

# detection on the embedded digits-on-photos set, from the classification demo's backbone
detect-demo: $(STAMP)
	test -f runs/demo/model_ema.safetensors || $(MAKE) demo
	rm -rf runs/detect_demo
	$(BIN)/cmtnet detect train --config configs/detect_demo.yaml --backbone-weights runs/demo/model_ema.safetensors
	$(BIN)/cmtnet detect eval --checkpoint runs/detect_demo/model.safetensors

# Semantic FPN on the embedded set (objects cut from photos), from the classification demo's backbone; the
# eval's last two lines are the all-background floor and the mIoU
segment-demo: $(STAMP)
	test -f runs/demo/model_ema.safetensors || $(MAKE) demo
	rm -rf runs/segment_demo
	$(BIN)/cmtnet segment train --config configs/segment_demo.yaml --backbone-weights runs/demo/model_ema.safetensors
	$(BIN)/cmtnet segment eval --checkpoint runs/segment_demo/model.safetensors

# --dist loadscope: a file's tests run on one worker, so that what they share (a training run, a server) is
# made once; the slowest files first (tests/conftest.py). make test adds timm's tests, one at a time after ours,
# to the same run, so that no worker waits for the other at the end.
LOADSCOPE := --dist loadscope --no-loadscope-reorder
# the plugin that narrows timm's tests to our models (tests/timm_suite), beside the caller's path
TIMM_SUITE := PYTHONPATH=tests/timm_suite$${PYTHONPATH:+:$$PYTHONPATH}

test: $(STAMP) $(TIMM_TESTS)/test_models.py
	$(TIMM_SUITE) $(PYTEST) $(LOADSCOPE) -p timm_suite tests $(TIMM_TESTS)/test_models.py
	$(MAKE) --no-print-directory docs

test-ours: $(STAMP)
	$(PYTEST) $(LOADSCOPE) tests

# timm's model test-suite, from the source distribution of the pinned timm, run against our models
$(TIMM_TESTS)/test_models.py: | $(STAMP)
	rm -rf $(TIMM_TESTS) $(VENV)/timm-sdist && mkdir -p $(VENV)/timm-sdist $(TIMM_TESTS)
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
		-d $(VENV)/timm-sdist timm==$(TIMM_VERSION)
	tar -xzf $(VENV)/timm-sdist/timm-$(TIMM_VERSION).tar.gz -C $(VENV)/timm-sdist
	cp $(VENV)/timm-sdist/timm-$(TIMM_VERSION)/tests/test_models.py $(TIMM_TESTS)/

test-timm: $(STAMP) $(TIMM_TESTS)/test_models.py
	$(TIMM_SUITE) $(PYTEST) -p timm_suite -rs --rootdir $(TIMM_TESTS) $(TIMM_TESTS)/test_models.py

# the docs site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or API reference
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

info: $(STAMP)
	$(BIN)/cmtnet info

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
