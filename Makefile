# worldloop: `make demo` sets up and runs the built-in demo, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/sim
EPISODES ?= 200

.PHONY: setup demo test lint format bench clean

setup: $(VENV)/.installed

# CPU machines get the CPU wheel of torch first (2.13.0 lies on this workplace's disk); with a GPU, the
# package's install resolves torch>=2.9 from pyproject.toml to a CUDA build.
# Bytecode: compiling all 15k .py files at install (pip's default) takes ~30 s; none of it is needed up front,
# since Python caches a module's bytecode the first time it imports it. A machine that sets
# PYTHONDONTWRITEBYTECODE (CI machines often do) would instead compile torch again in every process, so the
# set-up imports the hot path once with caching on (~5k files, 8 s on one core, against 36 CPU-s for
# compileall of everything), and `make test` caches whatever else the suite imports as it goes.
WARM_IMPORTS := torch numpy matplotlib.pyplot cv2 pyarrow av safetensors optuna anthropic git rich typer \
	pydantic jinja2 serial harness.cli harness.loop harness.reports models.train models.serve models.evaluate \
	robot.center_cli
# The package and its ~60 dependencies go in with uv (a pip-compatible installer, in the venv only): it fetches
# and unpacks wheels in parallel, 5 s where pip took 19 s here. torch stays pip's, whose configuration says
# where this workplace keeps the CPU wheel.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "uv>=0.5"
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet --no-compile "torch==2.13.0" \
		|| $(PY) -m pip install --quiet --no-compile "torch>=2.9"; fi
	$(PY) -m uv pip install --quiet --python $(PY) -e ".[dev]"
	PYTHONDONTWRITEBYTECODE= $(PY) -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" \
		$(WARM_IMPORTS)
	touch $@

DEMO_BUDGET ?= 25m
DEMO_PER_RUN ?= 5m
DEMO_CENTER_EPISODES ?= 20

# The demo dataset is recorded once; delete $(DATA) to record it again.
$(DATA)/meta/info.json: | setup
	$(VENV)/bin/harness data synth --episodes $(EPISODES) --out $(DATA)

demo: setup $(DATA)/meta/info.json
	$(VENV)/bin/harness data info $(DATA)
	$(VENV)/bin/harness data build $(DATA) --config experiments/dit.toml
	$(VENV)/bin/harness data show $(DATA) --split val --out reports/demo-canvases.png
	$(VENV)/bin/harness run --budget $(DEMO_BUDGET) --per-run $(DEMO_PER_RUN) --agent local --dataset $(DATA)
	$(VENV)/bin/harness promote --best
	$(VENV)/bin/robot-center --checkpoint best --benchmark --episodes $(DEMO_CENTER_EPISODES)

# Three workers, one test file each at a time (tests/conftest.py: the files that share the session's loop
# night go to one worker together), so module and session fixtures are built once: most of the suite waits on
# subprocesses starting Python and torch, or on timeouts, so three at once keep 2 cores busy.
TEST_WORKERS ?= 3
PYTEST_ARGS ?=
test: setup
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
