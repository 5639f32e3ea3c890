# make run   : install into .venv, then the default job (BBC News, both packaged teachers, offline)
# make test  : install into .venv, then the whole test suite (unit, tiny-model, slow real-teacher tests)
.PHONY: install run test test-fast export serve bench ag-news compare-ag agnews-transfer metadistil-ag mind-ablation agnews-ablation mind-transfer weak-teacher agnews-strong agnews-strong-k6 agnews-news-transfer reference strategies clean

VENV ?= .venv
BIN := $(VENV)/bin
# --resume when the run folder $(1) already holds a run, so rerunning a target continues it
resume_if = $(if $(wildcard $(1)/state.json),--resume,)
RUN ?= runs/default

install:
	bash scripts/install.sh

run: install
	$(BIN)/distill run --out $(RUN) $(call resume_if,$(RUN))

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
# cached outputs from the teacher store): MT-BERT with the paper's settings (w_hid 1, the default
# before 0.3) and the no-KD student, then MT-BERT with w_hid 0.1.
AG = --data ../shared/data/ag_news/test.csv --train-cap 3000 --max-length 64 --repeats 3 --student-epochs 4
ag-news: install
	$(BIN)/distill run $(AG) --baselines nokd --set mtbert.preset=paper --out runs/ag $(call resume_if,runs/ag)
	$(BIN)/distill run $(AG) --baselines "" --set mtbert.w_hid=0.1 --out runs/ag-hid01 $(call resume_if,runs/ag-hid01)

# The strategy comparison (issue: one trainer for every method): AG News as above, the same
# co-finetuned teachers (teacher store shared with `make ag-news`), 3 student seeds of every strategy.
# report.md's "Strategy comparison" table has test accuracy / macro-F1 (mean ± std), seconds per
# epoch and the teacher-weight summary; "Which teacher taught what" breaks the weights down per class.
compare-ag: install
	$(BIN)/distill run --config examples/agnews-compare.yaml $(call resume_if,runs/ag-compare)

# AG News with a transfer set (issue: make distillation pay): 3,000 labelled texts + the rest of the
# training part without labels (examples/agnews.yaml); then the reference models on that run's split.
agnews-transfer: install
	$(BIN)/distill run --config examples/agnews.yaml $(call resume_if,runs/agnews)

# AG News as above with strong teachers (all layers, 3 epochs, early stopping on dev): examples/agnews-strong.yaml
agnews-strong: install
	$(BIN)/distill run --config examples/agnews-strong.yaml $(call resume_if,runs/agnews-strong)

# ... with a 6-layer student (17.2% of the ensemble; depth chosen on dev): examples/agnews-strong-k6.yaml
agnews-strong-k6: install
	$(BIN)/distill run --config examples/agnews-strong-k6.yaml $(call resume_if,runs/agnews-strong-k6)

# ... and a larger transfer set: + the MIND sample and BBC News texts without labels: examples/agnews-news-transfer.yaml
agnews-news-transfer: install
	$(BIN)/distill run --config examples/agnews-news-transfer.yaml $(call resume_if,runs/agnews-news-transfer)

# MetaDistil in paper 004's table shape (issue: MetaDistil): AG News, training part capped at 1,000 (100 of them
# the quiz set), max length 64, 3 seeds; two MiniLM teachers finetuned independently (own heads), 3 epochs, all
# layers, shared by the four runs through the teacher store. Rows: KD from one teacher (hinton) and no KD,
# MetaDistil from that teacher with mtbert beside it for the cost (set metadistil.teacher to hinton's choice, printed in ag-meta/report.md),
# MetaDistil with the extra teacher, + warm-up, + noise. Then: python scripts/results_table.py runs/ag-meta*
MD = --data ../shared/data/ag_news/test.csv --train-cap 1000 --max-length 64 --repeats 3 --student-batch-size 32 \
	--teacher sentence-transformers/all-MiniLM-L6-v2 --teacher sentence-transformers/all-MiniLM-L6-v2 \
	--teacher-mode independent --teacher-epochs 3 --teacher-train-layers 0 --strategy metadistil
MD_TEACHER ?= 0
metadistil-ag: install
	$(BIN)/distill run $(MD) --baselines hinton,nokd --out runs/ag-meta $(call resume_if,runs/ag-meta)
	$(BIN)/distill run $(MD) --baselines mtbert --set metadistil.teacher=$(MD_TEACHER) --out runs/ag-meta-1t $(call resume_if,runs/ag-meta-1t)
	$(BIN)/distill run $(MD) --baselines "" --set metadistil.warmup_epochs=1 --out runs/ag-meta-warmup $(call resume_if,runs/ag-meta-warmup)
	$(BIN)/distill run $(MD) --baselines "" --set metadistil.warmup_epochs=1 --set metadistil.noise_p=0.2 --out runs/ag-meta-noise $(call resume_if,runs/ag-meta-noise)

# MIND with strong teachers (examples/mind.yaml) and the MT-BERT ablation over it (MT-BERT Fig. 5 shape):
# one teacher store, one run folder per row, runs/mind-ablation/ABLATION.md. Resumes when rerun.
mind-ablation: install
	$(BIN)/distill ablate --config examples/mind.yaml --out runs/mind-ablation

# The same ablation on AG News with the strong teachers of examples/agnews-strong.yaml (labelled texts only):
# runs/agnews-ablation/ABLATION.md. Resumes when rerun. TEACHER_STORE=~/.cache/distill/teachers reuses
# the teachers of `make agnews-strong`.
agnews-ablation: install
	$(BIN)/distill ablate --config examples/agnews-ablation.yaml --out runs/agnews-ablation \
		$(if $(TEACHER_STORE),--teacher-store $(TEACHER_STORE))

# MIND with the same teachers and the AG News texts as an unlabelled transfer set: examples/mind-transfer.yaml
mind-transfer: install
	$(BIN)/distill run --config examples/mind-transfer.yaml $(call resume_if,runs/mind-transfer)

# One weak teacher (issue: make distillation pay): MiniLM finetuned on 300 BBC texts with only its top layer
# trainable, 2 epochs (test macro-F1 about 65), given as a finished teacher beside MPNet (co-finetuned as in the
# default job); 3 seeds with the default guards, then the same students without the weak-teacher rule.
WEAK = --teacher runs/weak-minilm/teachers/teacher_0 --teacher sentence-transformers/all-mpnet-base-v2 --repeats 3
weak-teacher: install
	$(BIN)/distill run --teacher sentence-transformers/all-MiniLM-L6-v2 --train-cap 300 --teacher-train-layers 1 \
		--teacher-epochs 2 --baselines "" --student-epochs 1 --out runs/weak-minilm $(call resume_if,runs/weak-minilm)
	$(BIN)/distill run $(WEAK) --out runs/weak-teacher $(call resume_if,runs/weak-teacher)
	$(BIN)/distill run $(WEAK) --baselines "" --weak-teacher-margin none --out runs/weak-teacher-norule \
		$(call resume_if,runs/weak-teacher-norule)

reference: install
	$(BIN)/distill reference $(RUN)

strategies: install
	$(BIN)/distill strategies

clean:
	rm -rf $(VENV) .pytest_cache
