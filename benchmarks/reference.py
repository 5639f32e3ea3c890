"""Reference models: what a user would pick instead of distilling, trained on the run's own split and
labelled training texts and measured the same way as the student (``distill reference RUN``).

* ``tfidf-lr``: TF-IDF (word 1-2 grams, sublinear tf) + logistic regression (scikit-learn); ``C`` picked
  on dev macro-F1 from {1, 10, 100}.
* ``frozen-<teacher>-lr``: the pre-trained (not finetuned) teacher's mean-pooled, L2-normalised
  sentence embedding (sentence-transformers, truncated at the run's max length) + logistic regression.
* ``model2vec``: a static model distilled offline from the smallest teacher (``model2vec.distill``,
  PCA to 256 dims) with model2vec's own classifier (``StaticModelForClassification``, early stopping
  on the dev split), one per student seed.
* ``setfit``: SetFit on the smallest teacher's body (contrastive finetuning, then a logistic-regression
  head), one per student seed; contrastive steps capped at ``setfit_steps`` on CPU (stated in the table).
* the run's no-KD and distilled students (the saved student's export, else PyTorch), for the same
  latency measurement.

Per model: accuracy and macro-F1 (%) on dev and test (mean ± std over seeds where training is seeded),
parameters, file size (MB; weights in safetensors/JSON, never pickle), CPU latency at batch 1 and 32
(median ms over dev texts) and training seconds. The results go to ``RUN/reference/results.json``,
``RUN/reference/REFERENCE.md`` and the ``reference`` key of ``RUN/report.json``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from distill.errors import DistillError
from distill.metrics import classification_metrics
from distill.report import mean_std, pm
from distill.runio import atomic_dir, atomic_write_json, atomic_write_text

from .common import machine_info, timed_runs

log = logging.getLogger("distill")

#: Every reference model, in table order.
MODELS = ("tfidf-lr", "frozen-lr", "model2vec", "setfit")


def _latency(predict: Callable[[list[str]], np.ndarray], texts: list[str], batch: int, reps: int) -> float:
    """Median wall time (ms) of ``predict`` on ``batch`` dev texts (different texts per run)."""
    def fn(k):
        s = (max(k, 0) * batch) % max(1, len(texts) - batch)
        predict(texts[s:s + batch])

    times, _ = timed_runs(fn, min_reps=3, max_reps=reps, target_s=2.0, warmup=2)
    return float(np.median(times) * 1000.0)


def _dir_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def _save_arrays(folder: Path, arrays: dict, meta: dict) -> None:
    """Weights as safetensors plus a JSON of the rest (no pickle), written atomically."""
    import torch
    from safetensors.torch import save_file

    with atomic_dir(folder) as tmp:
        save_file({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(tmp / "weights.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta))


def _logreg_dev(Xtr, Xdev, data: dict, seed: int, grid=(1.0, 10.0, 100.0)):
    """Logistic regression on ``Xtr`` with the inverse regularisation ``C`` of ``grid`` that gives the best
    dev macro-F1; returns ``(C, fitted classifier)``."""
    from sklearn.linear_model import LogisticRegression

    best = None
    for C in grid:
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(Xtr, data["train"][1])
        f1 = classification_metrics(clf.predict_proba(Xdev), data["dev"][1], data["C"])["macro_f1"]
        if best is None or f1 > best[0]:
            best = (f1, C, clf)
    return best[1], best[2]


def tfidf_lr(data: dict, out: Path, seed: int) -> dict:
    """TF-IDF + logistic regression; C chosen on dev macro-F1."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    Xtr = vec.fit_transform(data["train"][0])
    Xdev = vec.transform(data["dev"][0])
    C, clf = _logreg_dev(Xtr, Xdev, data, seed)
    train_s = time.perf_counter() - t0
    _save_arrays(out / "tfidf-lr", {"idf": vec.idf_, "coef": clf.coef_, "intercept": clf.intercept_},
                 {"vocabulary": {k: int(v) for k, v in vec.vocabulary_.items()}, "C": C, "ngram_range": [1, 2]})
    return {"predict": lambda texts: clf.predict_proba(vec.transform(texts)), "train_s": train_s,
            "params": int(clf.coef_.size + clf.intercept_.size + vec.idf_.size),
            "file_mb": _dir_mb(out / "tfidf-lr"), "note": f"C={C:g} (dev)"}


def frozen_lr(data: dict, out: Path, seed: int, teacher: str, teacher_path: Path, max_length: int) -> dict:
    """A frozen pre-trained teacher's sentence embedding + logistic regression (C chosen on dev)."""
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    st = SentenceTransformer(str(teacher_path), device="cpu")
    st.max_seq_length = max_length

    def emb(texts):
        return st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                         show_progress_bar=False)

    Xtr, Xdev = emb(data["train"][0]), emb(data["dev"][0])
    C, clf = _logreg_dev(Xtr, Xdev, data, seed)
    train_s = time.perf_counter() - t0
    name = teacher.rstrip("/").split("/")[-1]
    _save_arrays(out / f"frozen-{name}-lr", {"coef": clf.coef_, "intercept": clf.intercept_},
                 {"encoder": teacher, "C": C, "max_length": max_length})
    body_mb = sum(f.stat().st_size for f in teacher_path.glob("*.safetensors")) / 1e6
    return {"predict": lambda texts: clf.predict_proba(emb(texts)), "train_s": train_s,
            "params": int(sum(p.numel() for p in st.parameters()) + clf.coef_.size + clf.intercept_.size),
            "file_mb": body_mb + _dir_mb(out / f"frozen-{name}-lr"), "note": f"{name}, C={C:g} (dev)",
            "name": f"frozen {name} + LR"}


def model2vec_clf(data: dict, out: Path, seed: int, teacher_path: Path, static=None) -> dict:
    """model2vec static model distilled from ``teacher_path`` + its classifier (early stopping on dev)."""
    from model2vec.distill import distill
    from model2vec.train import StaticModelForClassification

    t0 = time.perf_counter()
    static = static or distill(model_name=str(teacher_path), pca_dims=256)
    distill_s = time.perf_counter() - t0
    clf = StaticModelForClassification.from_static_model(model=static)
    names = data["label_names"]
    clf.fit(data["train"][0], [names[y] for y in data["train"][1]], X_val=data["dev"][0],
            y_val=[names[y] for y in data["dev"][1]], random_seed=seed, device="cpu")
    train_s = time.perf_counter() - t0
    from safetensors.torch import save_file

    with atomic_dir(out / f"model2vec-seed{seed}") as tmp:
        clf.to_static_model().save_pretrained(str(tmp / "static"))
        save_file({k: v.detach().contiguous() for k, v in clf.head.state_dict().items()}, str(tmp / "head.safetensors"))
    order = [list(clf.classes).index(n) for n in names]

    def predict(texts):
        return np.asarray(clf.predict_proba(texts))[:, order]

    return {"predict": predict, "train_s": train_s, "static": static,
            "params": int(static.embedding.size + sum(p.numel() for p in clf.head.parameters())),
            "file_mb": _dir_mb(out / f"model2vec-seed{seed}"), "note": f"PCA 256, distilled in {distill_s:.0f} s"}


def setfit_clf(data: dict, out: Path, seed: int, teacher_path: Path, max_length: int, steps: int) -> dict:
    """SetFit on the teacher body: ``steps`` contrastive steps (batch 16), then a logistic-regression head."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    t0 = time.perf_counter()
    model = SetFitModel.from_pretrained(str(teacher_path), device="cpu")
    model.model_body.max_seq_length = max_length
    ds = Dataset.from_dict({"text": data["train"][0], "label": data["train"][1]})
    # SetFit's trainer wants an output folder even with save_strategy="no"; keep it out of the run folder
    with tempfile.TemporaryDirectory(prefix="setfit-") as scratch:
        args = TrainingArguments(output_dir=scratch, batch_size=16, num_epochs=1, max_steps=steps,
                                 num_iterations=5, seed=seed, report_to="none", show_progress_bar=False,
                                 save_strategy="no", max_length=max_length)
        Trainer(model=model, args=args, train_dataset=ds).train()
    train_s = time.perf_counter() - t0
    with atomic_dir(out / f"setfit-seed{seed}") as tmp:
        model.model_body.save(str(tmp / "body"), safe_serialization=True)
        _save_arrays(tmp / "head", {"coef": model.model_head.coef_, "intercept": model.model_head.intercept_}, {})
    return {"predict": lambda texts: np.asarray(model.predict_proba(texts, as_numpy=True)), "train_s": train_s,
            "params": int(sum(p.numel() for p in model.model_body.parameters()) + model.model_head.coef_.size),
            "file_mb": _dir_mb(out / f"setfit-seed{seed}"), "note": f"{steps} contrastive steps (CPU cap)"}


def run_reference(run_dir: str | Path, models: tuple[str, ...] = MODELS, setfit_steps: int = 200,
                  seeds: int | None = None, latency_reps: int = 30) -> dict:
    """Train and measure the reference models on ``run_dir``'s split; write the results (see module doc).

    Args:
        models: a subset of :data:`MODELS`.
        setfit_steps: contrastive steps of SetFit (CPU cap).
        seeds: seeds of the seeded models (default: the run's ``repeats``; seed = run seed + k).

    Raises:
        DistillError: not a finished run folder, or an unknown model name.
    """
    from distill.hub import resolve_model
    from distill.runfolder import load_run_data
    from distill.predict import load_backend

    from .common import check_run_dir

    run_dir = Path(run_dir)
    report = check_run_dir(run_dir)
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise DistillError(f"--models: unknown reference model {bad[0]!r}; choose from {', '.join(MODELS)}.")
    ds, parts, cfg = load_run_data(run_dir)
    data = {part: ([ds.texts[r] for r in rows], [ds.labels[r] for r in rows]) for part, rows in parts.items()}
    data.update(C=len(ds.label_names), label_names=ds.label_names)
    smallest = min(report["teachers"], key=lambda t: t["params"])
    small_path = resolve_model(smallest["name"])
    out = run_dir / "reference"
    out.mkdir(exist_ok=True)
    seed_list = [cfg.seed + k for k in range(seeds or cfg.repeats)]
    dev_texts = data["dev"][0]
    rows, static = [], None

    def add(name: str, fits: list[dict], seeded: bool):
        per = [{part: classification_metrics(f["predict"](data[part][0]), data[part][1], data["C"])
                for part in ("dev", "test")} for f in fits]
        f0 = fits[0]
        row = {"model": name, "seeded": seeded, "seeds": len(fits), "params": f0["params"],
               "file_mb": round(f0["file_mb"], 2), "train_s": mean_std([f["train_s"] for f in fits]),
               "latency_ms": {f"b{b}": round(_latency(f0["predict"], dev_texts, b, latency_reps), 2) for b in (1, 32)},
               "note": f0.get("note", ""),
               **{part: {m: mean_std([p[part][m] for p in per]) for m in ("accuracy", "macro_f1")}
                  for part in ("dev", "test")}}
        rows.append(row)
        log.info("reference %s: test macro-F1 %.2f", name, row["test"]["macro_f1"]["mean"])

    if "tfidf-lr" in models:
        add("TF-IDF + LR", [tfidf_lr(data, out, cfg.seed)], False)
    if "frozen-lr" in models:
        for t in report["teachers"]:
            f = frozen_lr(data, out, cfg.seed, t["name"], resolve_model(t["name"]), cfg.max_length)
            add(f["name"], [f], False)
    if "model2vec" in models:
        fits = []
        for s in seed_list:
            fits.append(model2vec_clf(data, out, s, small_path, static))
            static = fits[-1]["static"]
        add(f"model2vec ({smallest['name'].split('/')[-1]}) + classifier", fits, True)
    if "setfit" in models:
        add(f"SetFit ({smallest['name'].split('/')[-1]})",
            [setfit_clf(data, out, s, small_path, cfg.max_length, setfit_steps) for s in seed_list], True)
    be = load_backend(run_dir)
    students = {}
    for name in dict.fromkeys(["nokd", cfg.strategy]):
        s = report["strategies"].get(name)
        if s:
            students[name] = {part: {m: s[part][m] for m in ("accuracy", "macro_f1")} for part in ("dev", "test")}
    stu_lat = {f"b{b}": round(_latency(lambda t: be.probabilities(t, 64), dev_texts, b, latency_reps), 2)
               for b in (1, 32)}
    res = {"run": str(run_dir), "data": report["data"]["source"], "split": report["data"]["split"],
           "ensemble_params": report["ensemble"]["params"], "student": {
               "params": report["student"]["params"], "file_mb": report["student"]["file_mb"],
               "backend": be.describe, "latency_ms": stu_lat, "strategies": students},
           "models": rows, "setfit_steps": setfit_steps, "machine": machine_info()}
    atomic_write_json(out / "results.json", res)
    md = render_reference(res)
    atomic_write_text(out / "REFERENCE.md", md)
    rep = json.loads((run_dir / "report.json").read_text())
    rep["reference"] = {k: v for k, v in res.items() if k != "machine"}
    atomic_write_json(run_dir / "report.json", rep)
    return res


def render_reference(res: dict) -> str:
    """Markdown table: every reference model and the run's students, same split, same measurements."""
    ens = res["ensemble_params"]
    L = ["# Reference models\n", f"Data: {res['data']}; split sizes {res['split']['sizes']} (seed "
         f"{res['split']['seed']}); all models trained on the same labelled training texts.\n",
         "| model | params | share of ensemble | file (MB) | dev macro-F1 | test acc | test macro-F1 | "
         "batch-1 ms | batch-32 ms | train s | note |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["models"]:
        L.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {100 * r['params'] / ens:.1f}% | {r['file_mb']:.1f} | "
                 f"{pm(r['dev']['macro_f1'])} | {pm(r['test']['accuracy'])} | {pm(r['test']['macro_f1'])} | "
                 f"{r['latency_ms']['b1']:.1f} | {r['latency_ms']['b32']:.1f} | {r['train_s']['mean']:.0f} | "
                 f"{r['note']}{' (' + str(r['seeds']) + ' seeds)' if r['seeded'] else ''} |")
    st = res["student"]
    for name, s in st["strategies"].items():
        L.append(f"| student: {name} | {st['params'] / 1e6:.2f}M | {100 * st['params'] / ens:.1f}% | "
                 f"{st['file_mb'] or 0:.1f} | {pm(s['dev']['macro_f1'])} | {pm(s['test']['accuracy'])} | "
                 f"{pm(s['test']['macro_f1'])} | {st['latency_ms']['b1']:.1f} | {st['latency_ms']['b32']:.1f} | "
                 f"see report.md | {st['backend'].split(' (')[0]} |")
    L.append("\nLatency: median wall time on this machine's CPU of one call on 1 or 32 dev texts, tokenisation "
             "included; the students share one architecture, so both rows show the saved student's latency. "
             "Mean ± std over seeds where training is seeded. Sizes: weights on disk (safetensors/JSON).")
    return "\n".join(L) + "\n"
