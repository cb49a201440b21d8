# dicom-node — the README's commands. `make run` sets everything up on first use, then serves.
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= config.yaml
PYTEST_ARGS ?=

.PHONY: setup run test lint typecheck demo bench lock clean

$(VENV)/.setup-stamp: requirements/lock.txt requirements/base.txt requirements/dev.txt pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: $(VENV)/.setup-stamp  ## build .venv (pinned), install Detectron2 and the test peers
	@bash scripts/setup.sh

run: $(VENV)/.setup-stamp  ## serve on config.yaml (SQLite, local spool, shipped demo model)
	$(VENV)/bin/dicom-node serve --config $(CONFIG)

test: setup  ## the whole suite, against real peers (DCMTK, dciodvfy, Orthanc, Chromium, PostgreSQL, HAProxy)
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check dicom_node models twin tests scripts

typecheck:
	$(VENV)/bin/mypy

demo: $(VENV)/.setup-stamp  ## send the RSNA sample and phantoms to a node, print findings, write previews
	$(PY) scripts/demo.py

bench: $(VENV)/.setup-stamp
	$(PY) scripts/bench_ingest.py

lock:  ## re-pin the whole tree from the working .venv
	{ echo "# The whole resolved tree, pinned (pip freeze of a working .venv; regenerate with make lock)."; \
	  $(VENV)/bin/pip freeze --exclude-editable | grep -v -i -E '^(sal-detectron2|dicom-node)'; } > requirements/lock.txt

clean:
	rm -rf var .pytest_cache .ruff_cache .mypy_cache
