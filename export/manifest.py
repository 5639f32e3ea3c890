"""The export folder's files besides the models: tokenizer, ``manifest.json`` pieces, ``EXPORT.md``,
the console summary.

Export folder (``distill-onnx-export/1``): ``model.onnx`` (fp32), ``model.int8.onnx``,
[``model.fp16.onnx``], tokenizer files (``tokenizer.json`` with truncation and padding preset),
``labels.json``, ``manifest.json`` (inputs/outputs, each model file's size and sha256, the INT8
method, the parity proof with its rule, test metrics, sizes in MB, latency in ms, versions) and
``EXPORT.md`` (the same as tables). The export writes nothing outside its folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from distill.errors import DistillError

FORMAT = "distill-onnx-export/1"
FP32_FILE, INT8_FILE, FP16_FILE = "model.onnx", "model.int8.onnx", "model.fp16.onnx"
MARKDOWN_FILE = "EXPORT.md"

TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
                   "added_tokens.json", "sentencepiece.bpe.model", "spm.model", "tokenizer.model")

USAGE = """\
Needs only onnxruntime, tokenizers and numpy:

    import json, numpy as np, onnxruntime as ort
    from tokenizers import Tokenizer
    m = json.load(open("manifest.json"))
    tok = Tokenizer.from_file("tokenizer.json")   # truncation (max_length) and padding preset
    sess = ort.InferenceSession("model.int8.onnx", providers=["CPUExecutionProvider"])
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    logits = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]   # (batch, num_labels) float32
    labels = [m["label_names"][i] for i in logits.argmax(-1)]

A dynamic INT8 model's logits depend slightly on what shares a call (its activation ranges are per
call); the reported INT8 parity was measured one text per call. model.onnx is the fp32 graph;
model.fp16.onnx (when present) is for the CUDAExecutionProvider (fp32 inputs/outputs)."""

INT8_PROTOCOL = ("one text per call, unpadded (dynamic quantization takes activation ranges per call, so "
                 "batched or padded calls can give slightly different INT8 logits)")


def file_info(path: Path) -> dict:
    """``{"file", "bytes", "mb", "sha256"}`` of a file (MB = 10^6 bytes)."""
    from distill.runio import sha256_file

    n = path.stat().st_size
    return {"file": path.name, "bytes": n, "mb": round(n / 1e6, 3), "sha256": sha256_file(path)}


def check_out(run_dir: Path, out: Path) -> None:
    """Refuse export folders that would replace something that is not an export (the folder is
    replaced as a whole), and unwritable locations.

    Raises:
        DistillError: naming ``out`` and what to choose instead.
    """
    from distill.runio import check_writable

    if out.exists() and not out.is_dir():
        raise DistillError(f"export folder {out} exists and is not a folder; choose another --out.")
    o, r = out.resolve(), run_dir.resolve()
    if o == r or o in r.parents or any(o == r / p or (r / p) in o.parents for p in ("student", "teachers")):
        raise DistillError(f"--out {out} would replace the run folder or its models; use e.g. {run_dir / 'export'}.")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise DistillError(f"--out {out} is a non-empty folder that is not an export (no manifest.json) and would be "
                           "replaced; choose a new or empty folder.")
    check_writable(out.parent)


def write_tokenizer(tok, student: Path, out: Path, max_length: int) -> dict:
    """Copy the tokenizer files and write ``tokenizer.json`` with truncation/padding preset.

    Raises:
        DistillError: the tokenizer has no fast (``tokenizers``) version.
    """
    if not getattr(tok, "is_fast", False):
        raise DistillError(f"{student}: the student's tokenizer has no fast (tokenizers) version, so no "
                           "tokenizer.json can be written for serving without transformers.")
    for f in TOKENIZER_FILES:
        if (student / f).is_file():
            shutil.copy2(student / f, out / f)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    pad_tok = tok.pad_token or tok.convert_ids_to_tokens(pad_id)
    bt = tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str())
    bt.enable_truncation(max_length=max_length)
    bt.enable_padding(pad_id=pad_id, pad_token=pad_tok, direction="right")
    bt.save(str(out / "tokenizer.json"))
    return {"file": "tokenizer.json", "pad_id": int(pad_id), "pad_token": pad_tok, "truncation": True,
            "max_length": max_length, "padding": "longest, right"}


def make_readable(folder: Path) -> None:
    """The temporary folder and its files are private (0700/0600); give the export the usual
    umask-based modes so a server running as another user can read it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def sizes(run_dir: Path, student: Path, models: dict) -> dict:
    """Sizes in MB of the teachers, the student's safetensors and each ONNX model, and their ratios."""
    from distill.modeling import weights_size_mb

    teachers = {}
    names = []
    rep = run_dir / "report.json"
    if rep.is_file():
        with contextlib.suppress(Exception):
            names = [t["name"] for t in json.loads(rep.read_text()).get("teachers", [])]
    for i, t in enumerate(sorted((run_dir / "teachers").glob("teacher_*"), key=lambda p: p.name)):
        teachers[names[i] if i < len(names) else t.name] = round(weights_size_mb(t), 3)
    s = {"teachers": teachers, "teachers_total": round(sum(teachers.values()), 3),
         "student_safetensors": round(weights_size_mb(student), 3)}
    for k, v in models.items():
        s[f"onnx_{k}"] = v["mb"]
    int8 = s["onnx_int8"]
    s["ratios"] = {"onnx_fp32_over_int8": round(s["onnx_fp32"] / int8, 2),
                   "student_over_onnx_int8": round(s["student_safetensors"] / int8, 2)}
    if s["teachers_total"]:
        s["ratios"]["teachers_over_onnx_int8"] = round(s["teachers_total"] / int8, 2)
        s["ratios"]["teachers_over_student"] = round(s["teachers_total"] / s["student_safetensors"], 2)
    return s


def int8_text(info: dict) -> str:
    """One phrase describing the INT8 model's quantization method."""
    gran = "per-channel" if info.get("per_channel") else "per-tensor"
    if info.get("method") == "static":
        cal = info.get("calibration", {})
        return (f"ONNX Runtime static QDQ quantization, QInt8 {gran} weights, UInt8 activations calibrated "
                f"({cal.get('method')}) on {cal.get('texts')} training texts")
    return f"ONNX Runtime dynamic quantization, QInt8 {gran} weights"


def opt_text(o: dict) -> str:
    """One phrase describing what the graph optimizer did."""
    if o.get("fusion") == "bert":
        ops = ", ".join(f"{k} x{v}" for k, v in o["fused_ops"].items())
        return f"onnxruntime.transformers `bert` fusion ({ops})"
    return f"fusion skipped ({o.get('reason')}); {o.get('note')}"


def render_export_markdown(m: dict, out: Path | None = None) -> str:
    """Markdown of the export (``EXPORT.md``): files, parity proof with the INT8 gate, size table (MB)
    and latency (ms)."""
    L = [f"# Export `{m['export_id']}`\n",
         f"{f'`{out}`, ' if out else ''}{m['created']}; student architecture `{m['student']['architecture']}`; "
         f"{m['optimizer']['exporter']}; graph optimizer: {opt_text(m['optimizer'])}; INT8: "
         f"{int8_text(m['models']['int8'])}.\n"]
    p = m["parity"]
    if p.get("checked") and "fp32" in p:
        f32, i8 = p["fp32"], p["int8"]
        L.append(f"**Parity** on the test split ({p['n']} texts, max length {p['max_length']}): "
                 f"{'all targets met' if p['passed'] else 'TARGETS MISSED: ' + '; '.join(p['failures'])}.\n")
        L.append(f"Rule: {p['rule']}\n")
        L.append("| model | max abs logit diff vs PyTorch | agreement (%) | accuracy | macro-F1 |")
        L.append("|---|---:|---:|---:|---:|")
        tm = m["test_metrics"]
        L.append(f"| PyTorch fp32 | - | - | {tm['pytorch']['accuracy']:.2f} | {tm['pytorch']['macro_f1']:.2f} |")
        L.append(f"| ONNX fp32 | {f32['max_abs_logit_diff']:.2e} (target <= "
                 f"{p['targets']['fp32_max_abs_logit_diff']:.0e}) | {f32['agreement_pct']:.2f} | "
                 f"{tm['onnx_fp32']['accuracy']:.2f} | {tm['onnx_fp32']['macro_f1']:.2f} |")
        L.append(f"| ONNX INT8 ({i8['method']}) | {i8['max_abs_logit_diff']:.2e} | {i8['agreement_pct']:.2f} | "
                 f"{tm['onnx_int8']['accuracy']:.2f} ({i8['accuracy_diff_pts']:+.2f}) | "
                 f"{tm['onnx_int8']['macro_f1']:.2f} ({i8['macro_f1_diff_pts']:+.2f}) |")
        L.append("\nINT8 candidates tried (b = right in fp32, wrong in INT8; c = the reverse; drop and its one-sided "
                 "95% upper bound in accuracy points):\n")
        L.append("| method | weights | agreement (%) | b | c | drop | upper 95% | p (one-sided exact) | gate |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for c in p.get("int8_candidates", []):
            g = c["gate"]
            L.append(f"| {c['method']}{' (kept)' if c.get('kept') else ''} | "
                     f"{'per-channel' if c['per_channel'] else 'per-tensor'} | {g['agreement_pct']:.2f} | {g['b']} | "
                     f"{g['c']} | {g['accuracy_drop_pts']:+.2f} | {g['accuracy_drop_upper95_pts']:+.2f} | "
                     f"{g['p_value']:.3g} | {'pass' if g['passed'] else 'FAIL'}: {g['reason']} |")
        L.append("")
    else:
        L.append("**Parity:** not checked.\n")
    s = m["sizes_mb"]
    int8 = s["onnx_int8"]
    L.append("| artefact | MB | x INT8 size |")
    L.append("|---|---:|---:|")
    for name, mb in s["teachers"].items():
        L.append(f"| teacher {name} (safetensors) | {mb:.1f} | {mb / int8:.2f} |")
    if len(s["teachers"]) > 1:
        L.append(f"| all teachers | {s['teachers_total']:.1f} | {s['teachers_total'] / int8:.2f} |")
    L.append(f"| student (safetensors) | {s['student_safetensors']:.1f} | {s['student_safetensors'] / int8:.2f} |")
    L.append(f"| ONNX fp32 | {s['onnx_fp32']:.1f} | {s['onnx_fp32'] / int8:.2f} |")
    if "onnx_fp16" in s:
        L.append(f"| ONNX fp16 | {s['onnx_fp16']:.1f} | {s['onnx_fp16'] / int8:.2f} |")
    L.append(f"| ONNX INT8 | {int8:.1f} | 1.00 |")
    L.append("\nMB = 10^6 bytes.\n")
    lat = m.get("latency_ms") or {}
    if lat:
        bs = list(lat.get("pytorch_fp32", {}))
        L.append(f"Latency (ms per call, median of {lat['runs']} after warm-up, sequence length {lat['seq_len']}, "
                 f"{lat['threads']} threads, CPU):\n")
        L.append("| runtime | " + " | ".join(b.replace("_", " ") for b in bs) + " |")
        L.append("|---|" + "---:|" * len(bs))
        for k, label in (("pytorch_fp32", "PyTorch fp32"), ("ort_fp32", "ONNX Runtime fp32"),
                         ("ort_int8", "ONNX Runtime INT8")):
            if k in lat:
                L.append(f"| {label} | " + " | ".join(f"{lat[k][b]:.1f}" for b in bs) + " |")
        L.append("")
    return "\n".join(L)


def print_summary(m: dict, out: Path) -> None:
    """The export's table (sizes MB, parity, metrics, latency ms) and verdict on the console."""
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(120, Console().width))
    p, s, lat = m["parity"], m["sizes_mb"], m.get("latency_ms") or {}
    t = Table(title=f"ONNX export {m['export_id']} -> {out}", show_header=True)
    for c in ("model", "MB", "max |dlogit|", "agree %", "acc", "macro-F1", "ms b1", "ms b32"):
        t.add_column(c, justify="right" if c != "model" else "left", no_wrap=True)
    tm = m["test_metrics"]

    def row(name, key, pk, mk, lk):
        pr = p.get(pk, {}) if pk else {}
        mt = tm.get(mk, {})
        lt = lat.get(lk, {})
        t.add_row(name, f"{s[key]:.1f}" if key in s else "-",
                  f"{pr['max_abs_logit_diff']:.1e}" if "max_abs_logit_diff" in pr else "-",
                  f"{pr['agreement_pct']:.2f}" if "agreement_pct" in pr else "-",
                  f"{mt['accuracy']:.2f}" if mt else "-", f"{mt['macro_f1']:.2f}" if mt else "-",
                  f"{lt['batch_1']:.1f}" if "batch_1" in lt else "-",
                  f"{lt['batch_32']:.1f}" if "batch_32" in lt else "-")

    i8 = m["models"]["int8"]
    row("PyTorch fp32", "student_safetensors", None, "pytorch", "pytorch_fp32")
    row("ONNX fp32", "onnx_fp32", "fp32", "onnx_fp32", "ort_fp32")
    row(f"ONNX INT8 ({i8['method']}, {'per-ch' if i8['per_channel'] else 'per-tensor'})", "onnx_int8", "int8",
        "onnx_int8", "ort_int8")
    if "fp16" in m["models"]:
        row("ONNX fp16", "onnx_fp16", None, None, None)
    con.print(t)
    r = s["ratios"]
    con.print(f"sizes: fp32/INT8 {r['onnx_fp32_over_int8']:.2f}x"
              + (f", teachers/INT8 {r['teachers_over_onnx_int8']:.2f}x" if "teachers_over_onnx_int8" in r else "")
              + f"; optimizer: {opt_text(m['optimizer'])}; total {m['times_s'].get('total_s', 0):.1f} s")
    if not p.get("checked"):
        con.print("parity: not checked")
        return
    for c in p.get("int8_candidates", []):
        con.print(f"INT8 {c['method']} ({'per-channel' if c['per_channel'] else 'per-tensor'})"
                  f"{' [kept]' if c.get('kept') else ''}: {'pass' if c['gate']['passed'] else 'FAIL'}: "
                  f"{c['gate']['reason']}")
    if p["passed"]:
        con.print("[green]parity: all targets met[/green]")
    else:
        con.print("[red]parity targets missed:[/red] " + "; ".join(p["failures"]))
