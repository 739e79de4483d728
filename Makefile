# The two commands a newcomer needs:  make run   and   make test
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PORT ?= 8501

.PHONY: setup run test test-fast lint bench browser clean-data notebooks

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# Set everything up, make sure there is something to look at (the offline demo
# dataset, built once and indexed by `python -m lib index demo --models color`: one
# decode per image for its embeddings, EB fractions, hashes and statistics), and open
# the app on http://127.0.0.1:$(PORT) (`python -m lib app`: `streamlit run app.py` with the
# modules its pages import loaded before it listens).
run: setup
	$(PY) -m lib demo --if-empty
	$(PY) -m lib app --port $(PORT)

# The whole suite, browser tests included (they need Debian's chromium: `make browser`).
# One worker per core (at most 4), each test file on one worker (pytest-xdist): its
# module fixtures (a server, an ingested folder) are built once, and each worker has its
# own data home (tests/conftest.py).
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: setup
	$(PY) -m pytest -q $(XDIST)

test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not browser and not slow"

# The exploratory notebooks (notebooks/), in JupyterLab on the same data home as the app.
notebooks: setup
	$(VENV)/bin/jupyter lab notebooks/

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m bench

browser:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

clean-data:
	rm -rf data/datasets data/cache data/demo_src data/annotations.sqlite
