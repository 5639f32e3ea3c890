"""Render the benchmark ``results.json`` as ``REPORT.md``."""

from __future__ import annotations


def _f(x, d: int = 2, unit: str = "") -> str:
    if x is None:
        return "-"
    return f"{x:.{d}f}{unit}"


def _machine(m: dict) -> list[str]:
    sw = m["software"]
    gpu = m.get("gpu")
    L = ["## Machine and software\n",
         f"- CPU: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cpus']} usable by this process); "
         f"PyTorch threads {m['torch_threads']}.",
         f"- GPU: {gpu['name'] + ' x' + str(gpu['count']) + ', ' + str(gpu['memory_gb']) + ' GB' if gpu else 'none'}.",
         f"- OS: {m['os']}. Load average (1/5/15 min) at start: {m.get('load_average_1_5_15')}, "
         f"at end: {m.get('load_average_end')}.",
         "- Software: " + ", ".join(f"{k} {v}" for k, v in sw.items() if v) + ".", ""]
    return L


def _inference(inf: dict, L: list[str]) -> None:
    st = inf["settings"]
    bs = [str(b) for b in st["batch_sizes"]]
    L.append("## Inference\n")
    L.append(f"Real test texts ({inf['test_texts']}) padded/truncated to exactly {st['seq_len']} tokens; "
             f"tokenisation not timed. Each figure is the median (p50) / 95th / 99th percentile of "
             f">= {st['min_reps']} timed runs (adaptive: about {st['target_s']:g} s of runs per cell, at most "
             f"{st['max_reps']}) after warm-up. Threads: PyTorch {inf['threads']['torch_intra_op']}, ONNX Runtime "
             f"intra-op {inf['threads']['ort_intra_op']} / inter-op {inf['threads']['ort_inter_op']}. "
             "Throughput = batch size / p50 latency. Sizes are the model files on disk (MB = 10^6 bytes). "
             f"Accuracy/macro-F1 (%) on the run's test split from the same fixed-length passes at batch {bs[-1]}.")
    if inf.get("note"):
        L.append(f"\nNote: {inf['note']}.")
    L.append("")
    L.append("| variant | device | size (MB) | test acc | test macro-F1 | "
             + " | ".join(f"b{b} p50 / p95 / p99 (ms)" for b in bs) + " | "
             + " | ".join(f"b{b} texts/s" for b in bs) + " | runs |")
    L.append("|---|---|---:|---:|---:|" + "---:|" * (2 * len(bs) + 1))
    for v in inf["variants"]:
        lat = v["latency"]
        cells = [f"{_f(lat[b]['p50_ms'])} / {_f(lat[b]['p95_ms'])} / {_f(lat[b]['p99_ms'])}" if b in lat else "-" for b in bs]
        thr = [_f(lat[b]["throughput_texts_per_s"], 1) if b in lat else "-" for b in bs]
        runs = "/".join(str(lat[b]["n"]) for b in bs if b in lat)
        L.append(f"| {v['label']} | {v['device']} | {_f(v['size_mb'])} | {_f(v['test']['accuracy'])} | "
                 f"{_f(v['test']['macro_f1'])} | " + " | ".join(cells) + " | " + " | ".join(thr) + f" | {runs} |")
    L.append("")
    notes = [f"- {v['label']}: {v['size_note']}" for v in inf["variants"] if v.get("size_note")]
    refs = [v for v in inf["variants"] if v.get("includes_text_processing")]
    if refs:
        notes.append("- Reference models (trained here on the run's split and labelled texts, seed "
                     f"{refs[0].get('seed')}) take raw texts, so their latency includes their own text processing; "
                     "the other rows start from token ids. Training: " + ", ".join(
                         f"{v['label'][len('reference: '):]} {v['train_s']:.0f} s"
                         + (f" ({v['note']})" if v.get("note") else "") for v in refs) + ".")
    if any(v.get("timed_inside") for v in inf["variants"]):
        notes.append("- Teachers are timed inside the ensemble's runs (each teacher's own forward pass); the "
                     "ensemble's latency is the whole run (all teachers + the mean of their softmax probabilities).")
    chk = [(v["label"], v["test"]["accuracy"] - v["run_report_test"]["accuracy"]) for v in inf["variants"]
           if v.get("run_report_test")]
    if chk:
        notes.append("- Test accuracy here minus the run's report.json (dynamic padding, run max length): "
                     + ", ".join(f"{lab} {d:+.2f} pp" for lab, d in chk) + ".")
    tc = (inf.get("export") or {}).get("tokenizer_check")
    if tc and tc.get("checked"):
        notes.append(f"- The export's tokenizer.json gives the same ids as the student tokenizer on "
                     f"{tc['identical_ids']}/{tc['texts']} test texts.")
    for s in inf.get("skipped", []):
        notes.append(f"- Skipped {s['variant']}: {s['reason']}")
    L += notes + ([""] if notes else [])
    rat = inf.get("ratios") or {}
    if rat:
        L.append("### Ratios (same run)\n")
        L.append("Speed-up = reference p50 latency / variant p50 latency at the same batch size (= throughput "
                 "ratio); size = reference MB / variant MB; deltas in percentage points (variant - reference).\n")
        L.append("| variant | reference | " + " | ".join(f"speed-up b{b}" for b in bs)
                 + " | x smaller | acc delta (pp) | macro-F1 delta (pp) |")
        L.append("|---|---|" + "---:|" * (len(bs) + 3))
        for v in inf["variants"]:
            for key, ref in (("vs_ensemble", "ensemble"), ("vs_student_fp32", "student fp32")):
                r = rat.get(v["name"], {}).get(key)
                if not r or v["name"] in ("ensemble",) and key == "vs_ensemble":
                    continue
                if v["name"] == "student" and key == "vs_student_fp32":
                    continue
                L.append(f"| {v['label']} | {ref} | " + " | ".join(_f(r["speedup_p50"].get(b), 2, "x") for b in bs)
                         + f" | {_f(r['size_x_smaller'], 2, 'x')} | {r['accuracy_delta_pp']:+.2f} | "
                         f"{r['macro_f1_delta_pp']:+.2f} |")
        L.append("")


def _serving(sv: dict, L: list[str]) -> None:
    L.append("## Serving (BentoML)\n")
    if sv.get("skipped"):
        L.append(f"Skipped: {sv['reason']}\n")
        return
    md = sv.get("metadata") or {}
    L.append(f"`serve.service:NewsClassifier` on {sv['host']} (model {sv['model']}"
             + (f", file {md.get('model_file')}" if md.get("model_file") else "")
             + (f", providers {md.get('providers')}" if md.get("providers") else "")
             + (f", {md.get('intra_op_threads')} intra-op threads" if md.get("intra_op_threads") else "")
             + f"); server start-up {sv.get('startup_s', 0):.1f} s. Each client posts {sv['payload']} back to back "
             f"for {sv['duration_s_per_level']:g} s per level; titles = first line of the run's test texts. "
             "Clients run on the same machine (they share its cores with the server).\n")
    L.append("| clients | requests | errors | req/s | p50 (ms) | p99 (ms) | mean model batch |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|")
    for r in sv["levels"]:
        L.append(f"| {r['clients']} | {r['requests']} | {r['errors']} | {_f(r['throughput_rps'], 1)} | "
                 f"{_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {_f(r.get('mean_batch_size'))} |")
    L.append("")


def _training(tr: dict, L: list[str]) -> None:
    L.append("## Training cost\n")
    if tr.get("skipped"):
        L.append(f"Skipped: {tr['reason']}\n")
        return
    rec = tr["recorded"]
    L.append(f"### Recorded by the run (report.json; {rec.get('device')}, {rec.get('threads')} threads)\n")
    L.append("| phase | seconds |")
    L.append("|---|---:|")
    for k, v in rec["phases_s"].items():
        L.append(f"| {k} | {v:.1f} |")
    L.append("")
    if rec["teacher_epochs"]:
        L.append("| teacher co-finetuning epoch | seconds | samples/s |")
        L.append("|---:|---:|---:|")
        for e in rec["teacher_epochs"]:
            L.append(f"| {e['epoch']} | {e['seconds']:.1f} | {e['samples_per_s']:.1f} |")
        L.append("")
    elif rec.get("teachers_reused_from_store"):
        L.append("Teachers were reused from the teacher store (no co-finetuning epochs in this run).\n")
    L.append("| student strategy | epoch (s) | samples/s | teacher signal |")
    L.append("|---|---:|---:|---|")
    for k, v in rec["strategies"].items():
        L.append(f"| {k} | {v['epoch_seconds']:.1f} | {v['samples_per_s']:.1f} | {v['teacher_signal']} |")
    L.append("")
    if "fresh" not in tr:
        return
    L.append(f"### Fresh step-capped measurement ({tr['steps']} steps, batch {tr['batch_size']}, max length "
             f"{tr['max_length']}, {tr['device']}, {tr['threads']} threads, seed {tr['seed']})\n")
    L.append("Same student initialisation, batches and optimiser for every row (`distill.trainer.fit` "
             "with `max_steps`); samples/s = samples / wall seconds of the whole call. Projected epoch = "
             f"{tr['train_examples']} training examples / samples/s.")
    ca = tr.get("cache") or {}
    if ca:
        L.append(f"Teacher-output cache: {ca.get('mode')}, {ca.get('file_mb')} MB, "
                 f"{'loaded from the run' if ca.get('reused') else 'computed now'} in {_f(ca.get('load_s'), 1)} s "
                 "(not counted in samples/s; the run's one-off cost is the `teacher_outputs` phase above).")
    for s in tr.get("cache_skipped", []):
        L.append(f"Skipped {s}.")
    L.append("")
    L.append("| measurement | teacher signal | steps | samples/s | x nokd | projected epoch (s) | test acc | test macro-F1 |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for k, v in tr["fresh"].items():
        t = v.get("test") or {}
        L.append(f"| {k} | {v['teacher_signal']} | {v['steps']} | {v['samples_per_s']:.1f} | "
                 f"{tr['ratios'][k]['over_nokd']:.2f} | {v['projected_epoch_s']:.1f} | {_f(t.get('accuracy'))} | "
                 f"{_f(t.get('macro_f1'))} |")
    L.append("")
    if tr.get("note"):
        L.append(f"Note: {tr['note']}.\n")
    r = tr["ratios"]
    for key in (k for k in r if k.startswith("cache_speedup_")):
        L.append(f"- Teacher-output cache speed-up ({key[len('cache_speedup_'):]}): **{r[key]:.2f}x** samples/s "
                 "(cache / online).")
    L.append("")
    tb = tr.get("textbrewer") or {}
    L.append("### Against TextBrewer\n")
    if tb.get("skipped", True):
        L.append(f"Skipped: {tb.get('reason')}\n")
        return
    s = tb["setup"]
    L.append(f"TextBrewer {tb['version']}: {s['distiller']}; teachers {', '.join(s['teachers'])} ({s['teacher_inputs']}); "
             f"student init: {s['student_init']}; batches: {s['batches']}; {s['steps']} steps x batch {s['batch_size']}, "
             f"max length {s['max_length']}; optimiser: {s['optimizer']}.\n")
    L.append(f"- TextBrewer loss: {s['loss']}.")
    L.append(f"- Our `avg` loss: {s['ours_loss_avg']}.")
    L.append(f"- Differences: {s['difference']}.\n")
    L.append("| trainer | teacher signal | samples/s | ours / TextBrewer | test acc | test macro-F1 |")
    L.append("|---|---|---:|---:|---:|---:|")
    t = tb["textbrewer"]
    L.append(f"| TextBrewer MultiTeacherDistiller | {t['teacher_signal']} | {t['samples_per_s']:.1f} | 1.00 | "
             f"{_f(t['test']['accuracy'])} | {_f(t['test']['macro_f1'])} |")
    for k, v in tb["ours"].items():
        te = v.get("test") or {}
        L.append(f"| ours {k} | {v['teacher_signal']} | {v['samples_per_s']:.1f} | "
                 f"{tb['ratios'][k + '_over_textbrewer_samples_per_s']:.2f} | {_f(te.get('accuracy'))} | "
                 f"{_f(te.get('macro_f1'))} |")
    L.append("")


def render(results: dict, plots: list[str]) -> str:
    """The whole ``REPORT.md``."""
    L = [f"# Benchmark report: `{results['run_dir']}`\n",
         f"Mode: {'quick (smoke test: fewer runs, batch sizes 1 and 8)' if results['quick'] else 'full'}; "
         f"started {results['started']}; total {results['total_s']:.0f} s. All figures were measured in this one "
         "process run; ratios compare figures from the same run.\n"]
    L += _machine(results["machine"])
    if results.get("inference"):
        if results["inference"].get("skipped") is True:  # the section; a list = skipped variants
            L.append(f"## Inference\n\nSkipped: {results['inference']['reason']}\n")
        else:
            _inference(results["inference"], L)
    _serving(results.get("serving") or {"skipped": True, "reason": "not run"}, L)
    _training(results.get("training") or {"skipped": True, "reason": "not run"}, L)
    if plots:
        L.append("## Plots\n")
        for p in plots:
            L.append(f"![{p}]({p})\n")
    L.append("## Section times (s)\n")
    L.append(", ".join(f"{k} {v:.0f}" for k, v in results["section_s"].items()) + "\n")
    return "\n".join(L)
