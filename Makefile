# turbda_kit — two commands do all set-up: `make quickstart` and `make test`.
# The CPU install path pins torch==2.13.0 (constraints-cpu.txt); GPU users install their
# own CUDA/ROCm torch first and then `pip install -e .` (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.turbda-installed
PYTEST_ARGS ?=
QUICKSTART_ARGS ?=

.PHONY: install quickstart test lint docs notebooks clean-runs help bench-dapper bench-letkf \
	pipeline-quick readme-check

help:
	@echo "make quickstart   install (if needed) and run the quickstart pipeline"
	@echo "make test         install (if needed), ruff check, the test suite, the docs site and"
	@echo "                  make pipeline-quick"
	@echo "make pipeline-quick  every stage of the paper pipeline at its --quick size (a temp dir)"
	@echo "make readme-check fail when a README result block differs from results/"
	@echo "make docs         build the documentation site into site/ (warnings are errors)"
	@echo "make install      only create $(VENV) and install the kit"
	@echo "make notebooks    rebuild notebooks/*.ipynb and figures/*.ipynb from their src/*.py"
	@echo "make bench-dapper create .venv-dapper with DAPPER (for make bench-letkf)"
	@echo "make bench-letkf  LETKF speed vs its FLOP floor and vs DAPPER (runs/bench_letkf.json)"

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[install] torch (CPU build, pinned) ..."
	@$(PIP) install -q torch==2.13.0 2>&1 | grep -v "is ignored: it is neither" || true
	@$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@echo "[install] turbda_kit and its stack ..."
	@$(PIP) install -q -c constraints-cpu.txt -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
	@$(PY) -c "import turbda_kit, deepspeed, mpi4py, papermill, holoviews, xarray" 2>/dev/null
	@# The kernel spec's env gives JupyterLab's kernels passive OpenMP waits too.
	@$(PY) -m ipykernel install --sys-prefix --name python3 --env OMP_WAIT_POLICY PASSIVE > /dev/null
	@touch $(STAMP)
	@echo "[install] done: $(VENV)"

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

# Passive OpenMP waits: spinning threads starve each other when ranks, kernels and tests
# share two cores.
test: install
	$(VENV)/bin/ruff check .
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m pytest $(PYTEST_ARGS)
	$(DOCS_BUILD)
	$(MAKE) pipeline-quick

# Every stage of `turbda pipeline paper` at its --quick size (under 10 minutes on 2 cores),
# into a temporary directory that is removed when it passes (kept, and named, when it fails);
# then the README's result blocks against results/.
pipeline-quick: install
	@dir=$$(mktemp -d "$${TMPDIR:-/tmp}/turbda-pipeline-quick.XXXXXX") && \
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} \
		$(VENV)/bin/turbda pipeline paper --quick --out "$$dir/paper" \
		&& rm -rf "$$dir" || { echo "pipeline-quick failed: see $$dir/paper"; exit 1; }
	$(MAKE) readme-check

readme-check: install
	$(VENV)/bin/turbda report check

# The documentation site in strict mode: any warning (a broken link, a docstring that
# names a parameter the signature lacks) fails the build. Nothing is executed or fetched.
# NO_MKDOCS_2_WARNING silences mkdocs-material's notice about its successor.
DOCS_BUILD = NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --clean --site-dir site
docs: install
	$(DOCS_BUILD)

quickstart: install
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(VENV)/bin/turbda pipeline quickstart $(QUICKSTART_ARGS)

# Notebooks are paired with percent-format scripts (jupytext.toml); the scripts are the
# source of truth. --sync writes each .ipynb from its newer script, without outputs.
notebooks: install
	$(VENV)/bin/jupytext --sync notebooks/src/*.py figures/src/*.py

# DAPPER pins older jupyter_client / ipykernel / notebook than papermill needs, so it gets
# its own venv; bench_letkf.py runs it there as a subprocess.
bench-dapper: install
	$(PY) benchmarks/bench_letkf.py --setup-dapper

bench-letkf: install
	mkdir -p runs
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) benchmarks/bench_letkf.py --json runs/bench_letkf.json

clean-runs:
	rm -rf runs
