"""Render ``report.json`` as the readable ``report.md`` of a run folder."""

from __future__ import annotations


def _pm(d: dict, digits: int = 2) -> str:
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
    L.append(f"**Data:** {d['source']} — {d['rows']} rows, {len(d['label_names'])} classes "
             f"({', '.join(d['label_names'])}).  ")
    L.append(f"**Split:** seed {sp['seed']}, train/dev/test = {sp['sizes']['train']}/{sp['sizes']['dev']}/"
             f"{sp['sizes']['test']} (stratified; fractions {', '.join(f'{x:.2f}' for x in sp['fractions'])}"
             f"{'; training part capped at ' + str(sp['train_cap']) if sp['train_cap'] else ''}); ids in `split.json`.  ")
    L.append(f"**Max length:** {cfg['max_length']} tokens. **Seeds:** {cfg['repeats']} "
             f"(students; teachers finetuned once).\n")

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
                 f"{_pm(s['dev']['accuracy'])} | {_pm(s['dev']['macro_f1'])} | {_pm(s['test']['accuracy'])} | "
                 f"{_pm(s['test']['macro_f1'])} |")
    L.append("")
    L.append(f"Student results are mean ± std (sample std) over {cfg['repeats']} seed(s). The saved student "
             f"(`student/`) is seed {st['seed']} of `{st['strategy']}` (best dev macro-F1): test acc "
             f"{st['test']['accuracy']:.2f}, macro-F1 {st['test']['macro_f1']:.2f}.\n")

    c = r["compression"]
    L.append("## Compression\n")
    L.append(f"- Student: {st['layers']} layers, hidden {st['source']['hidden_size']}, {st['params']:,} parameters "
             f"({_student_src(st['source'])}).")
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
             f"before the shared head; top {tt['train_layers'] or 'all'} layers trainable; "
             f"{'reused from the teacher store' if tt.get('reused') else 'trained in this run'}.")
    for name, s in r["strategies"].items():
        L.append(f"- `{name}`: {s['description']} (teacher signal: {s['teacher_signal']}).")
    L.append(f"- Tokenizer rule for the hidden loss: {st['tokenizer_rule']}.")
    L.append("")

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
    L.append("| student strategy | epoch time (s) | samples/s |")
    L.append("|---|---:|---:|")
    for name, s in r["strategies"].items():
        L.append(f"| {name} | {_pm(s['epoch_seconds'], 1)} | {_pm(s['samples_per_s'], 1)} |")
    L.append("")
    ca = r["cache"]
    L.append(f"Teacher-output cache: {ca['mode']} (estimated {ca['estimated_mb']:.1f} MB for the training split, "
             f"limit {ca['limit_mb']:.0f} MB; cache file incl. dev/test logits {ca['file_mb']:.1f} MB"
             f"{', reused' if ca.get('reused') else ''}).\n")
    sy = r["system"]
    L.append("## System\n")
    L.append(f"{sy['device']} ({sy['gpu'] or sy['cpu']}), {sy['threads']} threads, precision {sy['precision']}; "
             f"torch {sy['torch']}, transformers {sy['transformers']}, Python {sy['python']}; distill {r['version']}.")
    if r.get("export"):
        L.append("\n## Export\n")
        L.append(r["export"].get("markdown", ""))
    return "\n".join(L) + "\n"


def _student_src(src: dict) -> str:
    if src["kind"] == "teacher-prefix":
        return f"token embeddings + first {src['layers']} layers of {src['teacher']}"
    if src["kind"] == "config":
        return f"random init from {src['config']}"
    return f"checkpoint {src['model']}"
