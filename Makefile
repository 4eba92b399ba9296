# Two entry points; both create the virtual environment when it is missing.
#   make demo   - the main job on the generated toy data (CPU, minutes)
#   make test   - the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export DETECTRON2_DATASETS ?= $(CURDIR)/datasets
export PYTHONUNBUFFERED = 1

.PHONY: venv demo test bench lint
venv:
	bash scripts/setup_env.sh $(VENV)

demo: venv
	$(PY) tools/demo.py

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/bench_eval.py

lint: venv
	$(PY) -m black --check -q -l 100 wsss_d2 tools tests benchmarks projects
	$(PY) -m isort --check-only -q wsss_d2 tools tests benchmarks projects
	$(PY) -m ruff check -q wsss_d2 tools tests benchmarks projects
