# Onramp: two commands do all the set-up on a fresh machine.
#   make serve   create .venv, install Onramp, run the service (127.0.0.1:50051, ./onramp.db, demo catalog)
#   make test    create .venv, install Onramp with test extras, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test protos config-docs bench clean

# scripts/make_venv.py holds a lock while it builds, so `make serve` and `make test` may start together.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) scripts/make_venv.py $(VENV)

serve: $(STAMP)
	$(VENV)/bin/onramp serve $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

config-docs: $(STAMP)
	$(PY) scripts/gen_config_docs.py

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) $(VENV).lock build *.egg-info
