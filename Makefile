# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench setup
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/workbench demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/organisms.py
