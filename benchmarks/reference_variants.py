"""Reference models as ``distill bench`` variants: trained on the run's split and labelled training
texts (:mod:`benchmarks.reference`, one seed: the run's), then timed and scored by
:func:`benchmarks.inference.measure` in the same loop as the students, teachers and ensemble, so
every row of the inference table and of ``accuracy_vs_latency.png`` comes from one process.

A reference model takes raw texts: its latency includes its own text processing (TF-IDF
vectorising; model2vec's and SetFit's tokenisation), while the students' and teachers' latency
starts from token ids (tokenisation not timed, about 0.05-0.2 ms per text with a fast tokenizer).
The table says so per row (``includes_text_processing``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .inference import Stage, VariantSpec

log = logging.getLogger("distill.bench")

#: Reference models ``distill bench`` trains by default (SetFit takes minutes on CPU: opt in).
DEFAULT_MODELS = ("tfidf-lr", "model2vec")
FRAMEWORK = {"tfidf-lr": "scikit-learn", "frozen-lr": "sentence-transformers + scikit-learn",
             "model2vec": "model2vec", "setfit": "setfit"}


def reference_specs(run_dir: Path, out_dir: Path, models: tuple[str, ...] = DEFAULT_MODELS,
                    setfit_steps: int = 100):
    """``fn(test texts, test labels) -> [VariantSpec]`` for :func:`benchmarks.inference.run_inference`.

    Args:
        out_dir: where the trained reference models are saved (their sizes are those files, MB).
        models: a subset of :data:`benchmarks.reference.MODELS`.
        setfit_steps: contrastive steps of SetFit (CPU cap).

    Raises:
        DistillError: an unknown model name (when the returned function is called).
    """
    from distill.errors import DistillError
    from distill.hub import resolve_model
    from distill.runfolder import load_run_data

    from . import reference as ref
    from .common import check_run_dir

    def build(texts: list[str], labels: list[int]) -> list[VariantSpec]:
        bad = [m for m in models if m not in ref.MODELS]
        if bad:
            raise DistillError(f"--reference: unknown reference model {bad[0]!r}; choose from {', '.join(ref.MODELS)}.")
        report = check_run_dir(run_dir)
        ds, parts, cfg = load_run_data(run_dir)
        data = {part: ([ds.texts[r] for r in rows], [ds.labels[r] for r in rows]) for part, rows in parts.items()}
        data.update(C=len(ds.label_names), label_names=ds.label_names)
        smallest = min(report["teachers"], key=lambda t: t["params"])
        small_path = resolve_model(smallest["name"])
        out_dir.mkdir(parents=True, exist_ok=True)
        fits = []
        for m in models:
            log.info("reference %s: training", m)
            if m == "tfidf-lr":
                fits.append((m, "TF-IDF + LR", ref.tfidf_lr(data, out_dir, cfg.seed)))
            elif m == "model2vec":
                fits.append((m, f"model2vec ({Path(smallest['name']).name}) + classifier",
                             ref.model2vec_clf(data, out_dir, cfg.seed, small_path)))
            elif m == "setfit":
                fits.append((m, f"SetFit ({Path(smallest['name']).name})",
                             ref.setfit_clf(data, out_dir, cfg.seed, small_path, cfg.max_length, setfit_steps)))
            else:
                for t in report["teachers"]:
                    f = ref.frozen_lr(data, out_dir, cfg.seed, t["name"], resolve_model(t["name"]), cfg.max_length)
                    fits.append((m, f["name"], f))
        specs = []
        for key, label, f in fits:
            name = "ref_" + label.split(" (")[0].lower().replace(" + ", "_").replace(" ", "_")

            def fn(rows, predict=f["predict"]):
                return predict([texts[r] for r in rows])

            specs.append(VariantSpec(name, [Stage(name, fn)], {
                "label": f"reference: {label}", "framework": FRAMEWORK[key], "precision": "fp32", "device": "cpu",
                "size_mb": f["file_mb"], "params": f["params"], "train_s": f["train_s"], "note": f.get("note", ""),
                "includes_text_processing": True, "seed": cfg.seed}))
        return specs

    return build
