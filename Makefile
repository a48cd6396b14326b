# The two set-up commands of the README: `make demo` and `make test`.
VENV ?= .venv
export VENV

.PHONY: setup demo test bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/vmcluster-lab demo

test: setup
	$(VENV)/bin/pytest -ra

bench: setup
	$(VENV)/bin/python bench/lab_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
