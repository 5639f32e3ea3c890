"""The run report: assemble ``report.json`` from the phases' results and render it as ``report.md``."""

from __future__ import annotations

import logging
import platform
import statistics

import numpy as np
import torch

from . import __version__
from . import distributed as D
from .device import cpu_model
from .guards import teacher_warnings

log = logging.getLogger("distill")


def mean_std(vals: list[float]) -> dict:
    """``{"mean", "std" (sample std, 0 for one value), "values"}``."""
    return {"mean": float(np.mean(vals)), "std": float(statistics.stdev(vals)) if len(vals) > 1 else 0.0,
            "values": [float(v) for v in vals]}


def _weights_over_seeds(rs: list[dict]) -> dict | None:
    """Mean over seeds of the per-seed teacher-weight summaries (see ``students.teacher_weight_summary``)."""
    ws = [r.get("teacher_weights") for r in rs if r.get("teacher_weights")]
    if not ws:
        return None
    classes = [c for c in ws[0]["per_class"] if all(c in w["per_class"] for w in ws)]
    return {"teachers": ws[0]["teachers"], "seeds": len(ws),
            "mean": np.mean([w["mean"] for w in ws], 0).tolist(),
            "dominant_share": np.mean([w["dominant_share"] for w in ws], 0).tolist(),
            "per_class": {c: np.mean([w["per_class"][c] for w in ws], 0).tolist() for c in classes}}


def build_report(cfg, P, teacher_metrics, ens, ens_params, results, best, teacher_rec, cache_info, times, device,
                 precision, store, previous=None) -> dict:
    """Assemble ``report.json``: data and split, teachers, ensemble, every student strategy (mean ± std
    over seeds of accuracy/macro-F1, epoch seconds, samples/s, final-epoch loss components, the
    teacher-weight summary), the saved student, compression ratios, cache, wall times and system.

    ``previous``: the run's existing ``report.json`` (a ``--resume``); its ``reference`` section, written
    by ``distill reference`` on the same split and labelled texts, is kept."""
    import transformers

    student_params = best["params"]
    mean_teacher = float(np.mean([m["params"] for m in teacher_metrics]))
    summary = {}
    for strat, rs in results.items():
        summary[strat] = {part: {m: mean_std([r[part][m] for r in rs]) for m in ("accuracy", "macro_f1")}
                          for part in ("dev", "test")}
        ep = [e for r in rs for e in r["epochs"]]
        summary[strat]["epoch_seconds"] = mean_std([e["seconds"] for e in ep])
        summary[strat]["samples_per_s"] = mean_std([e["samples_per_s"] for e in ep])
        per_rank = [e["rank_samples_per_s"] for e in ep if e.get("rank_samples_per_s")]
        summary[strat]["rank_samples_per_s"] = [round(float(v), 1) for v in np.mean(per_rank, 0)] if per_rank else None
        peaks = [r["peak_memory_mb"] for r in rs if r.get("peak_memory_mb") is not None]
        summary[strat]["peak_memory_mb"] = max(peaks) if peaks else None
        added = [r["peak_memory_mb"] - r["memory_at_start_mb"] for r in rs if r.get("memory_at_start_mb") is not None]
        summary[strat]["added_memory_mb"] = max(added) if added else None
        last = [r["epochs"][-1].get("components", {}) for r in rs if r["epochs"]]
        summary[strat]["final_epoch_components"] = {k: float(np.mean([c[k] for c in last if k in c]))
                                                    for k in (last[0] if last else {})}
        summary[strat]["description"] = rs[0]["description"]
        summary[strat]["paper"] = rs[0].get("paper", "")
        summary[strat]["settings"] = rs[0].get("settings", {})
        summary[strat]["teacher_signal"] = rs[0]["teacher_signal"]
        summary[strat]["teacher_weights"] = _weights_over_seeds(rs)
    warnings = teacher_warnings(teacher_metrics, summary)
    sel = P.teacher_selection
    decisions = sel.notes + ([P.student_note] if P.student_note else [])
    for w in warnings:
        log.warning(w)
    return {
        "version": __version__,
        "warnings": warnings,
        "decisions": decisions,
        "teacher_selection": sel.to_dict(),
        "config": cfg.to_dict(),
        "data": {"source": P.ds.source, "rows": P.transfer.labelled_rows(P.ds), "label_names": P.ds.label_names,
                 "split": {"seed": cfg.seed, "sizes": P.split.sizes(), "fractions": P.split.fractions,
                           "train_cap": cfg.train_cap},
                 "transfer": P.transfer.describe()},
        "teachers": teacher_metrics,
        "teacher_training": teacher_rec,
        "teacher_store": str(store),
        "ensemble": {**ens, "params": ens_params, "file_mb": round(sum(m["file_mb"] for m in teacher_metrics), 2)},
        "student": {"source": P.student_source, "layers": P.K, "params": student_params,
                    "file_mb": best.get("file_mb"), "strategy": best["strategy"], "seed": best["seed"],
                    "dev": best["dev"], "test": best["test"],
                    "tokenizer_rule": ("teachers whose tokenizer equals the student's: token-level hidden MSE; "
                                       "others: MSE of masked-mean pooled states of the mapped layers")},
        "compression": {"ensemble_over_student": ens_params / student_params,
                        "mean_teacher_over_student": mean_teacher / student_params,
                        "student_share_of_ensemble": student_params / ens_params},
        "strategies": summary,
        "runs": results,
        "cache": cache_info,
        "times_s": times,
        "parallel": parallel_record(cfg),
        "system": {"device": device, "precision": precision, "threads": torch.get_num_threads(), "cpu": cpu_model(),
                   "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                   "torch": torch.__version__, "transformers": transformers.__version__,
                   "python": platform.python_version()},
        **_kept_sections(previous),
    }


def _kept_sections(previous) -> dict:
    """The sections of an earlier ``report.json`` that other commands added (``reference``); {} when none
    or when the file is unreadable (it is rewritten whole anyway)."""
    import json

    try:
        old = json.loads(previous.read_text()) if previous is not None and previous.is_file() else {}
    except (OSError, ValueError):
        return {}
    return {k: old[k] for k in ("reference",) if k in old}


def parallel_record(cfg) -> dict:
    """World size, backend, nodes, and the per-rank and global batch sizes of the teachers and students
    (rows per optimisation step; the global batch is per rank x world size)."""
    w = D.world()
    return {**w.describe(), "rank": w.rank,
            "student_batch_per_rank": cfg.student_batch_size, "student_global_batch": cfg.student_batch_size * w.size,
            "teacher_batch_per_rank": cfg.teacher_batch_size, "teacher_global_batch": cfg.teacher_batch_size * w.size}


def pm(d: dict, digits: int = 2) -> str:
    """``"mean ± std"`` of a :func:`mean_std` dict (just the mean for a single value)."""
    if len(d.get("values", [])) > 1:
        return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"
    return f"{d['mean']:.{digits}f}"


def _mb(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def render_markdown(r: dict) -> str:
    """Markdown report: data/split, teachers, ensemble, students (mean ± std over seeds), sizes,
    compression ratios, wall times per phase and per epoch, cache and system."""
    cfg = r["config"]
    L = []
    L.append("# Distillation run report\n")
    d = r["data"]
    sp = d["split"]
    L.append(f"**Data:** {d['source']} — {d['rows']} labelled rows, {len(d['label_names'])} classes "
             f"({', '.join(d['label_names'])}).  ")
    L.append(f"**Split:** seed {sp['seed']}, train/dev/test = {sp['sizes']['train']}/{sp['sizes']['dev']}/"
             f"{sp['sizes']['test']} (stratified; fractions {', '.join(f'{x:.2f}' for x in sp['fractions'])}"
             f"{'; training part capped at ' + str(sp['train_cap']) if sp['train_cap'] else ''}); ids in `split.json`.  ")
    tr = d.get("transfer") or {}
    if tr.get("texts"):
        parts = [f"{tr['from_train']} training-part texts without labels"] if tr["from_train"] else []
        parts += [f"{n} from `{f}`" for f, n in tr["files"].items()]
        if tr.get("augmented"):
            parts.append(f"{tr['augmented']} augmented copies of the training texts (`--augment`, Tang et al. 2019)")
        src = " + ".join(parts)
        L.append(f"**Transfer set:** {tr['texts']} unlabelled texts ({src}); the teachers label them and every "
                 "strategy that learns from teachers trains on them with the KD/hidden losses (task loss on labelled "
                 "texts only; gold-label teacher weights use the ensemble's prediction there)"
                 f"{'; ' + str(tr['skipped_held_out_duplicates']) + ' skipped as duplicates of dev/test texts' if tr['skipped_held_out_duplicates'] else ''}.  ")
    L.append(f"**Max length:** {cfg['max_length']} tokens. **Seeds:** {cfg['repeats']} "
             f"(students; teachers finetuned once).\n")

    for w in r.get("warnings", []):
        L.append(f"> **Warning:** {w}\n")
    for w in r.get("decisions", []):
        L.append(f"> **Decision:** {w}\n")
    L.append("## Accuracy and macro-F1 (%)\n")
    L.append("| model | params | file (MB) | dev acc | dev macro-F1 | test acc | test macro-F1 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for t in r["teachers"]:
        L.append(f"| teacher {t['name']} ({t['model_type']}, {t['layers']}L/{t['hidden_size']}) | "
                 f"{t['params'] / 1e6:.1f}M | {_mb(t['file_mb'])} | {t['dev']['accuracy']:.2f} | "
                 f"{t['dev']['macro_f1']:.2f} | {t['test']['accuracy']:.2f} | {t['test']['macro_f1']:.2f} |")
    e = r["ensemble"]
    L.append(f"| teacher ensemble (mean of probabilities) | {e['params'] / 1e6:.1f}M | {_mb(e['file_mb'])} | "
             f"{e['dev']['accuracy']:.2f} | {e['dev']['macro_f1']:.2f} | {e['test']['accuracy']:.2f} | "
             f"{e['test']['macro_f1']:.2f} |")
    st = r["student"]
    for name, s in r["strategies"].items():
        label = f"student: {name}" + (" (the run's student)" if name == st["strategy"] else "")
        L.append(f"| {label} | {st['params'] / 1e6:.1f}M | {_mb(st['file_mb']) if name == st['strategy'] else '-'} | "
                 f"{pm(s['dev']['accuracy'])} | {pm(s['dev']['macro_f1'])} | {pm(s['test']['accuracy'])} | "
                 f"{pm(s['test']['macro_f1'])} |")
    L.append("")
    L.append(f"Student results are mean ± std (sample std) over {cfg['repeats']} seed(s). The saved student "
             f"(`student/`) is seed {st['seed']} of `{st['strategy']}` (best dev macro-F1): test acc "
             f"{st['test']['accuracy']:.2f}, macro-F1 {st['test']['macro_f1']:.2f}.\n")
    L.extend(_comparison_section(r))

    c = r["compression"]
    L.append("## Compression\n")
    shape = (f"TextCNN, feature size {st['source']['hidden_size']}" if st["source"]["kind"] == "textcnn"
             else f"{st['layers']} layers, hidden {st['source']['hidden_size']}")
    L.append(f"- Student: {shape}, {st['params']:,} parameters ({_student_src(st['source'])}).")
    L.append(f"- Ensemble / student parameters: **{c['ensemble_over_student']:.2f}x** "
             f"(student = {100 * c['student_share_of_ensemble']:.1f}% of the ensemble).")
    L.append(f"- Mean teacher / student parameters (\"times smaller\", paper 004): **{c['mean_teacher_over_student']:.2f}x**.")
    if st.get("file_mb") and e.get("file_mb"):
        L.append(f"- Saved size: ensemble {e['file_mb']:.1f} MB vs student {st['file_mb']:.1f} MB "
                 f"(**{e['file_mb'] / st['file_mb']:.2f}x** smaller; MB = 10^6 bytes of safetensors).")
    L.append("")

    L.append("## Methods\n")
    tt = r["teacher_training"]
    L.append(f"- Teachers: {'co-finetuned jointly through one shared attentive-pooling + prediction head (MT-BERT §2.1)' if tt['mode'] == 'joint' else 'finetuned independently (own heads)'}; "
             f"teachers with hidden size != {cfg['head_dim'] or 'the smallest'} use a per-teacher linear projection "
             f"before the shared head; {'top ' + str(tt['train_layers']) if tt['train_layers'] else 'all'} layers trainable; "
             f"{'reused from the teacher store' if tt.get('reused') else 'trained in this run'}.")
    for name in tt.get("given") or []:
        L.append(f"- Teacher `{name}`: a finetuned classifier for these labels, used as given (its own head; "
                 "not co-finetuned).")
    for name, s in r["strategies"].items():
        L.append(f"- `{name}`: {s['description']} (teacher signal: {s['teacher_signal']}).")
    if cfg.get("student_patience"):
        best = "; ".join(f"{name} {[x.get('best_epoch') for x in runs]}" for name, runs in r["runs"].items())
        L.append(f"- Students: early stopping on dev macro-F1 (patience {cfg['student_patience']}, at most "
                 f"{cfg['student_epochs']} epochs); each keeps its best dev epoch's weights. Best epoch per seed: {best}.")
    L.append(f"- Tokenizer rule for the hidden loss: {st['tokenizer_rule']}.")
    L.append("")

    L.extend(_teacher_weight_section(r))

    L.append("## Wall time (s)\n")
    L.append("| phase | seconds |")
    L.append("|---|---:|")
    for k, v in r["times_s"].items():
        L.append(f"| {k} | {v:.1f} |")
    L.append("")
    if tt.get("epochs"):
        L.append("| teacher co-finetuning epoch | seconds | samples/s | loss |")
        L.append("|---|---:|---:|---:|")
        for ep in tt["epochs"]:
            L.append(f"| {ep['epoch']} | {ep['seconds']:.1f} | {ep['samples_per_s']:.1f} | {ep['loss']:.4f} |")
        L.append("")
    L.append("| student strategy | epoch time (s) | samples/s | peak memory (MB) | added by the phase (MB) | "
             "final-epoch loss components (mean over seeds) |")
    L.append("|---|---:|---:|---:|---:|---|")
    for name, s in r["strategies"].items():
        comps = ", ".join(f"{k} {v:.4f}" for k, v in (s.get("final_epoch_components") or {}).items())
        peak = f"{s['peak_memory_mb']:.0f}" if s.get("peak_memory_mb") else "-"
        added = f"{s['added_memory_mb']:.0f}" if s.get("added_memory_mb") is not None else "-"
        L.append(f"| {name} | {pm(s['epoch_seconds'], 1)} | {pm(s['samples_per_s'], 1)} | {peak} | {added} | "
                 f"{comps or '-'} |")
    L.append("")
    par = r.get("parallel") or {}
    if par.get("world_size", 1) > 1:
        L.append(f"**{par['world_size']} processes** ({par['backend']}, {par['nodes']} node(s)): batch "
                 f"{par['student_batch_per_rank']} per rank, global {par['student_global_batch']} (students); "
                 f"{par['teacher_batch_per_rank']} per rank, global {par['teacher_global_batch']} (teachers). "
                 "samples/s above are all ranks together; per rank (mean over epochs and seeds):\n")
        L.append("| student strategy | " + " | ".join(f"rank {k} samples/s" for k in range(par["world_size"])) + " |")
        L.append("|---|" + "---:|" * par["world_size"])
        for name, s in r["strategies"].items():
            L.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in s.get("rank_samples_per_s") or []) + " |")
        L.append("")
    L.append("Peak memory: the process's peak resident set during that student's training (CPU; it includes the "
             "loaded teachers and data, and what earlier phases left in the allocator), or the peak CUDA "
             "allocation on a GPU; \"added\" is the peak less the figure when the phase started. Maxima over seeds.")
    L.append("")
    ca = r["cache"]
    L.append(f"Teacher-output cache: {ca['mode']} (estimated {ca['estimated_mb']:.1f} MB for the training split, "
             f"limit {ca['limit_mb']:.0f} MB; cache file incl. dev/test logits {ca['file_mb']:.1f} MB"
             f"{', reused' if ca.get('reused') else ''}).\n")
    sy = r["system"]
    L.append("## System\n")
    L.append(f"{sy['device']} ({sy['gpu'] or sy['cpu']}), {sy['threads']} threads, precision {sy['precision']}; "
             f"torch {sy['torch']}, transformers {sy['transformers']}, Python {sy['python']}; distill {r['version']}.")
    return "\n".join(L) + "\n"


def _student_src(src: dict) -> str:
    if src["kind"] == "textcnn":
        from .textcnn import TextCNNSettings, describe

        return f"{describe(TextCNNSettings(**src['settings']))}; tokenizer of {src['tokenizer_from']}"
    if src["kind"] == "teacher-prefix":
        return f"token embeddings + first {src['layers']} layers of {src['teacher']}"
    if src["kind"] == "config":
        return f"random init from {src['config']}"
    return f"checkpoint {src['model']}"


def _teacher_weight_section(r: dict) -> list[str]:
    """"Which teacher taught what": per strategy, each teacher's mean weight (or selection share)
    overall and per gold class, and the share of training texts on which it dominated."""
    rows = {name: s["teacher_weights"] for name, s in r["strategies"].items() if s.get("teacher_weights")}
    if not rows:
        return []
    names = [t["name"].rstrip("/").split("/")[-1] for t in r["teachers"]]
    L = ["## Which teacher taught what\n",
         "Mean weight each strategy gave each teacher over all training steps (per-sample weights averaged per "
         "training text, then over texts and seeds), and the share of training texts on which the teacher had the "
         "largest weight. `mtbert` shows eq. (2)'s 1/(1+CE) weights normalised over the teachers; `rl` the share "
         "of the KD signal its policy gave each teacher (selected teachers split a text's KD weight).\n"]
    L.append("| strategy | " + " | ".join(f"mean weight {n}" for n in names) + " | "
             + " | ".join(f"dominant on {n}" for n in names) + " |")
    L.append("|---|" + "---:|" * (2 * len(names)))
    for name, w in rows.items():
        L.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in w["mean"]) + " | "
                 + " | ".join(f"{100 * x:.1f}%" for x in w["dominant_share"]) + " |")
    L.append("")
    classes = list(next(iter(rows.values()))["per_class"])
    L.append("Mean weight per gold class (" + " / ".join(names) + "):\n")
    L.append("| strategy | " + " | ".join(classes) + " |")
    L.append("|---|" + "---|" * len(classes))
    for name, w in rows.items():
        L.append(f"| {name} | " + " | ".join(" / ".join(f"{x:.2f}" for x in w["per_class"].get(c, []))
                                            for c in classes) + " |")
    L.append("")
    return L


def _comparison_section(r: dict) -> list[str]:
    """One row per strategy: test accuracy and macro-F1 (mean ± std), the macro-F1 difference to
    ``nokd`` (when trained), seconds per epoch and the teacher-weight summary."""
    strategies = r["strategies"]
    if len(strategies) < 2:
        return []
    names = [t["name"].rstrip("/").split("/")[-1] for t in r["teachers"]]
    base = strategies.get("nokd")
    L = ["## Strategy comparison (test split)\n",
         f"Mean weight / share of texts dominated: teachers {' / '.join(names)}.\n",
         "| strategy | test acc | test macro-F1 | macro-F1 vs nokd | s/epoch | mean teacher weight | dominant share |",
         "|---|---:|---:|---:|---:|---|---|"]
    for name, s in strategies.items():
        delta = "-" if base is None or name == "nokd" else \
            f"{s['test']['macro_f1']['mean'] - base['test']['macro_f1']['mean']:+.2f}"
        w = s.get("teacher_weights")
        mean = " / ".join(f"{x:.2f}" for x in w["mean"]) if w else "-"
        dom = " / ".join(f"{100 * x:.0f}%" for x in w["dominant_share"]) if w else "-"
        L.append(f"| {name} | {pm(s['test']['accuracy'])} | {pm(s['test']['macro_f1'])} | {delta} | "
                 f"{pm(s['epoch_seconds'], 1)} | {mean} | {dom} |")
    L.append("")
    return L
