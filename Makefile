# sparsity-lab: set-up, notebooks, book and checks. `make help` lists the targets.
#
#   make book   set up .venv, train the shared dense models, execute every notebook (full,
#               cached), build book/_build/html
#   make models train the dense models the notebooks share (each recipe, seeds 0-2)
#   make test   set up .venv, then ruff, unit tests, notebooks in smoke mode, nbval, strict book
#   make lab    open the notebooks in JupyterLab

PYTHON ?= python3
# Extra pip options for torch only. On Linux with network access, plain PyPI gives the CUDA
# build; TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" gives the CPU one.
TORCH_PIP_ARGS ?=

VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
LAB_INSTALLED := $(VENV)/.lab-installed

NOTEBOOKS := notebooks
EXECUTED := book/notebooks
NOTEBOOK_SOURCES := $(sort $(wildcard $(NOTEBOOKS)/[0-9][0-9]*_*.py))
EXECUTED_NOTEBOOKS := $(patsubst $(NOTEBOOKS)/%.py,$(EXECUTED)/%.ipynb,$(NOTEBOOK_SOURCES))
# A smoke run must stay under a minute per notebook on two cores (the CI machine).
SMOKE_BUDGET_S := 60

# The steps of `make test` depend on each other's outputs: never run them side by side.
.NOTPARALLEL:
.DEFAULT_GOAL := help
.PHONY: help install models book test lint unit smoke nbval book-strict browser lab clean clean-all

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch goes first, on its own and pinned: an unpinned or co-resolved torch can pull
# gigabytes of CUDA wheels. The stamp re-runs the install only when the pins change.
$(INSTALLED): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install -c requirements.lock $(TORCH_PIP_ARGS) torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e ".[dev]"
	touch $@

install: $(INSTALLED) ## create .venv and install the pinned environment

# The full book's time budget (issue: a student waits minutes, not hours): all notebooks in
# 20 minutes on two cores, none over 4.  Over budget is reported, never a failure: timings
# on a shared machine are noisy.  BOOK_WORKERS notebooks run side by side; one whose header
# says `runs_alone` (it starts processes of its own: 08's data-parallel workers, or sweeps
# that fork BOOK_WORKERS processes to fit the 4 minutes) runs first, alone.
# The notebooks' times leave out the shared dense models (`make models` prints its own);
# the last line of `make book` is the whole build's wall time.
BOOK_BUDGET_S := 1200
NOTEBOOK_BUDGET_S := 240
BOOK_WORKERS ?= 2
# The library's run cache (sparsity_lab.run_cache), read and written ("1") by the book and
# JupyterLab: a notebook re-executed after an edit of its code, or two notebooks that want
# the same run, read what was computed with the same library and data instead of training
# again (each notebook's text says how many runs it read).  BOOK_RUN_CACHE=write trains
# every run afresh.  The tests and smoke runs leave the cache alone.
BOOK_RUN_CACHE ?= 1
LAB_RUN_CACHE ?= 1
# The processes a sweep forks in JupyterLab (sparsity_lab.experiments.sweep): one per core,
# each on one thread, as `make book` runs a notebook that has the machine to itself.
LAB_WORKERS ?= $(shell nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
# The dense models the notebooks share (every recipe, seeds 0-2), trained side by side before
# the notebooks run, so that none of them waits for models that others use too.
models: $(INSTALLED) ## train the dense models every notebook shares (once; kept in the cache)
	$(BIN)/python -m sparsity_lab.pipeline models --workers $(BOOK_WORKERS) \
		--timings $(EXECUTED)/timings.json

book: $(INSTALLED) ## train the shared dense models, execute every notebook (full, cached), build book/_build/html
	@mkdir -p $(EXECUTED) && date +%s > $(EXECUTED)/.started
	@# a model that failed to train is reported; the notebooks that need it try again
	-$(MAKE) --no-print-directory models
	SPARSITY_LAB_RUN_CACHE=$(BOOK_RUN_CACHE) \
	$(BIN)/python -m sparsity_lab.pipeline execute --notebooks $(NOTEBOOKS) --out $(EXECUTED) \
		--workers $(BOOK_WORKERS) --budget-s $(NOTEBOOK_BUDGET_S) --total-budget-s $(BOOK_BUDGET_S)
	$(BIN)/python -m sparsity_lab.pipeline methods --notebooks $(NOTEBOOKS) --out book/methods.md
	$(BIN)/jupyter-book build book
	@echo "The book is in book/_build/html/index.html"
	@echo "make book took $$(( ($$(date +%s) - $$(cat $(EXECUTED)/.started)) / 60 )) min"

test: lint unit smoke nbval book-strict browser ## all the checks of CI, in order

lint: $(INSTALLED) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest exits with 5 when it collects no tests: nothing failed, so that is a success.
unit: $(INSTALLED) ## unit tests (tests/)
	$(BIN)/python -m pytest tests/ || test $$? -eq 5

smoke: $(INSTALLED) ## every notebook with SMOKE=True into book/notebooks
	SPARSITY_LAB_RUN_CACHE=0 $(BIN)/python -m sparsity_lab.pipeline execute --smoke --budget-s $(SMOKE_BUDGET_S) \
		--notebooks $(NOTEBOOKS) --out $(EXECUTED)

# nbval re-runs each executed copy and compares the outputs of the cells with the
# tag "nbval-check-output"; the copies already hold SMOKE=True, so this run is a smoke run too.
nbval: $(INSTALLED) ## re-run the executed notebooks and compare the checked outputs
ifeq ($(EXECUTED_NOTEBOOKS),)
	@echo "nbval: no notebooks in $(NOTEBOOKS)/, nothing to check"
else
	SPARSITY_LAB_STATIC=1 SPARSITY_LAB_RUN_CACHE=0 $(BIN)/python -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg $(EXECUTED_NOTEBOOKS)
endif

book-strict: $(INSTALLED) ## build the book from scratch with warnings as errors
	rm -rf book/_build
	$(BIN)/python -m sparsity_lab.pipeline methods --notebooks $(NOTEBOOKS) --out book/methods.md
	$(BIN)/jupyter-book build --all -W -n --keep-going book
	@# formulas must render offline: MathJax is served from the build, never from a CDN
	@test -f book/_build/html/_static/mathjax/tex-chtml.js || \
		(echo "book: MathJax is not in book/_build/html/_static" && exit 1)
	@! grep -rlq --include=*.html "cdn.jsdelivr.net/npm/mathjax" book/_build/html || \
		(echo "book: a page loads MathJax from a CDN" && exit 1)

# The built book as a reader's browser shows it: headless Chromium at phone and desktop
# widths, offline (tests/book_in_browser.py).  Chromium comes from the system's packages:
# as root (CI, a container) a missing one is installed; otherwise the step says how.
CHROMIUM ?= /usr/bin/chromium

browser: $(INSTALLED) ## open the built book in headless Chromium: chapter drawer, offline formulas
	@test -x $(CHROMIUM) || test "$$(id -u)" != 0 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null)
	@test -x $(CHROMIUM) || (echo "browser: no Chromium at $(CHROMIUM); install it" \
		"(apt-get install chromium) or pass CHROMIUM=/path/to/chromium" && exit 1)
	CHROMIUM=$(CHROMIUM) $(BIN)/python tests/book_in_browser.py book/_build/html

# JupyterLab reads overrides.json of its environment: a double-click opens a .py notebook
# as a notebook (jupytext's viewer), not in the text editor.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json

$(LAB_INSTALLED): $(INSTALLED) requirements.lock
	$(BIN)/pip install -c requirements.lock -e ".[dev,lab]"
	mkdir -p $(dir $(LAB_SETTINGS))
	printf '%s\n' '{"@jupyterlab/docmanager-extension:plugin":' \
		'  {"defaultViewers": {"python": "Jupytext Notebook"}}}' > $(LAB_SETTINGS)
	touch $@

# The server's root is the repository, so that jupytext finds jupytext.toml (the pairing).
# The .py sources open as notebooks directly: nothing is synced or rewritten on start.
# As root (a container, a cloud VM) Jupyter refuses to start without --allow-root.
lab: $(LAB_INSTALLED) ## open the notebooks in JupyterLab (installs it on first use)
	SPARSITY_LAB_RUN_CACHE=$(LAB_RUN_CACHE) SPARSITY_LAB_WORKERS=$(LAB_WORKERS) $(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/$(NOTEBOOKS) \
		$(if $(filter 0,$(shell id -u)),--allow-root)

clean: ## remove built pages, executed notebooks and caches (keeps .venv)
	rm -rf book/_build $(EXECUTED) .cache .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

clean-all: clean ## also remove .venv
	rm -rf $(VENV)
