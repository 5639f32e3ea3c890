"""ONNX export (issues 3, 10): files + manifest, parity proof and the INT8 gate, static INT8, bare-onnxruntime
loading, fp16, a student that is not a transformer, errors, atomicity, nothing written outside the export."""

from __future__ import annotations

import functools
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from distill.errors import DistillError  # noqa: E402

MANIFEST_KEYS = {"format", "created", "source_run", "student_sha256", "export_id", "models", "inputs", "outputs",
                 "label_names", "max_length", "tokenizer", "opset", "optimizer", "parity", "test_metrics",
                 "latency_ms", "sizes_mb", "student", "versions", "usage"}


def _fast_latency(mp: pytest.MonkeyPatch) -> None:
    """The CLI calls ``export_run`` with its defaults (20 timed calls per latency cell); 3 keep tests fast."""
    import export.onnx_export as ex

    mp.setattr(ex, "export_run", functools.partial(ex.export_run, latency_runs=3))


@pytest.fixture(scope="module")
def exported(tiny_run) -> tuple[Path, dict, int]:
    """`distill export RUN --fp16 --allow-drift` on the tiny run (default folder RUN/export)."""
    from typer.testing import CliRunner

    from distill.cli import app

    with pytest.MonkeyPatch.context() as mp:
        _fast_latency(mp)
        res = CliRunner().invoke(app, ["export", str(tiny_run), "--fp16", "--allow-drift"])
    assert res.exit_code == 0, res.output
    exp = tiny_run / "export"
    return exp, json.loads((exp / "manifest.json").read_text()), res.exit_code


def _test_texts(run_dir: Path) -> tuple[list[str], list[int]]:
    from distill.runfolder import load_run_data

    ds, parts, _ = load_run_data(run_dir)
    return [ds.texts[i] for i in parts["test"]], [ds.labels[i] for i in parts["test"]]


def test_export_writes_all_files_and_manifest(exported, tiny_run):
    from distill.runio import sha256_file

    exp, m, _ = exported
    for f in ("model.onnx", "model.int8.onnx", "model.fp16.onnx", "tokenizer.json", "labels.json", "manifest.json",
              "EXPORT.md"):
        assert (exp / f).is_file(), f
    assert MANIFEST_KEYS <= set(m)
    assert m["format"] == "distill-onnx-export/1"
    assert m["source_run"] == str(tiny_run.resolve())
    assert m["student_sha256"] == sha256_file(tiny_run / "student" / "model.safetensors")
    for key, info in m["models"].items():
        p = exp / info["file"]
        assert info["bytes"] == p.stat().st_size and info["sha256"] == sha256_file(p), key
        assert info["mb"] == pytest.approx(p.stat().st_size / 1e6, abs=1e-3)
    assert set(m["models"]) == {"fp32", "int8", "fp16"}
    assert isinstance(m["models"]["int8"]["per_channel"], bool) and m["models"]["int8"]["method"] in ("dynamic", "static")
    assert m["student"]["architecture"] == "transformer" and m["student"]["model_type"] == "bert"
    assert m["export_id"] == m["models"]["int8"]["sha256"][:12]
    meta = json.loads((tiny_run / "student" / "classifier.json").read_text())
    assert m["label_names"] == meta["label_names"] == json.loads((exp / "labels.json").read_text())["label_names"]
    assert m["max_length"] == meta["max_length"] == 32
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask"]
    assert all(i["dtype"] == "int64" and i["shape"] == ["batch", "sequence"] for i in m["inputs"])
    assert m["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", meta["num_labels"]]}]
    assert m["tokenizer"]["file"] == "tokenizer.json" and m["tokenizer"]["truncation"] is True
    assert isinstance(m["tokenizer"]["pad_id"], int)
    assert m["optimizer"]["fusion"] == "bert" and m["optimizer"]["fused_ops"].get("Attention")
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(m["versions"])
    assert "onnxruntime" in m["usage"] and "tokenizers" in m["usage"]
    for k in ("pytorch_fp32", "ort_fp32", "ort_int8"):
        assert set(m["latency_ms"][k]) == {"batch_1", "batch_32"}
    assert m["latency_ms"]["runs"] == 3 and m["latency_ms"]["threads"] == 2
    from export.onnx_export import export_run

    assert inspect.signature(export_run).parameters["latency_runs"].default >= 20
    s = m["sizes_mb"]
    assert len(s["teachers"]) == 2 and s["student_safetensors"] > 0 and s["onnx_int8"] < s["onnx_fp32"]
    # nothing temporary left next to or inside the export
    assert not [p for p in exp.parent.iterdir() if p.name.startswith(".export.")]
    assert sorted(p.name for p in exp.iterdir() if p.suffix == ".onnx") == ["model.fp16.onnx", "model.int8.onnx",
                                                                            "model.onnx"]
    # the export's own markdown; the run's report is not touched (data flows one way)
    md = (exp / "EXPORT.md").read_text()
    assert m["export_id"] in md and "| ONNX INT8 (" in md and "Latency" in md and "McNemar" in md
    assert "export" not in json.loads((tiny_run / "report.json").read_text())
    assert "## Export" not in (tiny_run / "report.md").read_text()


def test_fp32_parity(exported, tiny_run):
    import onnxruntime as ort
    import torch

    from distill.modeling import load_classifier

    exp, m, _ = exported
    p = m["parity"]
    assert p["checked"] and p["split"] == "test" and p["n"] == len(_test_texts(tiny_run)[0])
    assert p["fp32"]["max_abs_logit_diff"] <= 1e-4
    assert p["fp32"]["agreement_pct"] == 100.0
    assert m["test_metrics"]["onnx_fp32"]["accuracy"] == m["test_metrics"]["pytorch"]["accuracy"]
    # independent check: another batch size and sequence length than the trace, with padding
    model, tok, _ = load_classifier(tiny_run / "student")
    enc = tok(["market shares profit", "the team won the cup final in the league season", "vote"],
              padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    sess = ort.InferenceSession(str(exp / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).logits.numpy()
    assert got.shape == (3, m["outputs"][0]["shape"][1]) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-4


def test_int8_gate_recorded_and_recomputable(exported, tiny_run):
    """The manifest's INT8 gate numbers are those of the kept INT8 model, recomputed here from scratch
    (one text per call, as the protocol says) against PyTorch, and the verdict follows the stated rule."""
    import onnxruntime as ort
    import torch
    from scipy.stats import binom

    from distill.modeling import load_classifier

    exp, m, _ = exported
    p, i8 = m["parity"], m["parity"]["int8"]
    g = i8["gate"]
    assert "McNemar" in p["rule"] and p["targets"]["int8_alpha"] == 0.05
    assert i8["method"] == m["models"]["int8"]["method"] and i8["per_channel"] == m["models"]["int8"]["per_channel"]
    assert i8["kept"] and sum(c["kept"] for c in p["int8_candidates"]) == 1
    assert m["models"]["int8"]["quantized_ops"]
    texts, labels = _test_texts(tiny_run)
    model, tok, _ = load_classifier(tiny_run / "student")
    sess = ort.InferenceSession(str(exp / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    q, r = [], []
    for t in texts:
        enc = tok([t], truncation=True, max_length=m["max_length"], return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        q.append(int(sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0].argmax()))
        with torch.no_grad():
            r.append(int(model(torch.from_numpy(ids), torch.from_numpy(mask)).logits.argmax()))
    q, r, y = np.array(q), np.array(r), np.array(labels)
    b, c = int(((r == y) & (q != y)).sum()), int(((r != y) & (q == y)).sum())
    assert (g["n"], g["b"], g["c"]) == (len(y), b, c)
    assert g["agreement_pct"] == pytest.approx(100 * (q == r).mean())
    assert g["accuracy_drop_pts"] == pytest.approx(100 * (b - c) / len(y))
    assert g["p_value"] == pytest.approx(binom.sf(b - 1, b + c, 0.5) if b else 1.0)
    assert g["accuracy_drop_upper95_pts"] >= g["accuracy_drop_pts"]
    assert i8["accuracy_diff_pts"] == pytest.approx(
        m["test_metrics"]["onnx_int8"]["accuracy"] - m["test_metrics"]["pytorch"]["accuracy"])
    fails = g["accuracy_drop_pts"] > 0.5 and g["p_value"] < 0.05
    assert g["passed"] is (not fails)
    assert m["parity"]["passed"] == (g["passed"] and m["parity"]["fp32"]["max_abs_logit_diff"] <= 1e-4)


BARE_SCRIPT = r"""
import json, sys
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

exp, texts_file = sys.argv[1], sys.argv[2]
m = json.load(open(f"{exp}/manifest.json"))
tok = Tokenizer.from_file(f"{exp}/tokenizer.json")
sess = ort.InferenceSession(f"{exp}/{m['models']['int8']['file']}", providers=["CPUExecutionProvider"])
data = json.load(open(texts_file))
enc = tok.encode_batch(data["texts"][:5])  # a padded batch works too
ids = np.array([e.ids for e in enc], dtype=np.int64)
assert len({len(e.ids) for e in enc}) == 1 and ids.shape[1] <= m["max_length"]
batch = sess.run(["logits"], {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in enc])})[0]
assert batch.shape == (5, len(m["label_names"])) and batch.dtype == np.float32
preds = []
for text in data["texts"]:  # the parity protocol of the INT8 model: one text per call
    e = tok.encode(text)
    logits = sess.run(["logits"], {"input_ids": np.array([e.ids], dtype=np.int64),
                                   "attention_mask": np.array([e.attention_mask], dtype=np.int64)})[0]
    preds += logits.argmax(-1).tolist()
acc = 100.0 * float(np.mean(np.array(preds) == np.array(data["labels"])))
banned = sorted(k for k in ("torch", "transformers", "distill", "export") if k in sys.modules)
print(json.dumps({"preds": preds, "accuracy": acc, "labels": [m["label_names"][p] for p in preds], "banned": banned}))
"""


def test_int8_loads_in_bare_onnxruntime(exported, tiny_run, tmp_path):
    """Only onnxruntime + tokenizers + numpy + json, in a fresh isolated interpreter, with the export folder
    copied elsewhere: the reported INT8 accuracy and the in-process predictions are reproduced."""
    import onnxruntime as ort

    from distill.modeling import load_classifier
    from serve.runtime import ort_logits, padded_batches, token_ids

    exp, m, _ = exported
    alone = tmp_path / "alone"
    shutil.copytree(exp, alone)
    texts, labels = _test_texts(tiny_run)
    (tmp_path / "texts.json").write_text(json.dumps({"texts": texts, "labels": labels}))
    (tmp_path / "bare.py").write_text(BARE_SCRIPT)
    res = subprocess.run([sys.executable, "-I", str(tmp_path / "bare.py"), str(alone), str(tmp_path / "texts.json")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["banned"] == []
    assert out["accuracy"] == pytest.approx(m["test_metrics"]["onnx_int8"]["accuracy"], abs=1e-9)
    _, tok, _ = load_classifier(tiny_run / "student")
    sess = ort.InferenceSession(str(exp / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    singles = padded_batches(token_ids(tok, texts, m["max_length"]), m["tokenizer"]["pad_id"], batch_size=1)
    ref = ort_logits(sess, singles, len(texts)).argmax(-1).tolist()
    assert out["preds"] == ref


def test_fp16_file(exported):
    import onnx
    import onnxruntime as ort

    exp, m, _ = exported
    onnx.checker.check_model(str(exp / "model.fp16.onnx"))
    g = onnx.load(str(exp / "model.fp16.onnx")).graph
    assert [i.type.tensor_type.elem_type for i in g.input] == [onnx.TensorProto.INT64] * 2  # keep_io_types
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer)
    assert m["models"]["fp16"]["keep_io_types"] is True
    ids = np.array([[2, 10, 11, 12, 3, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 1, 0]], dtype=np.int64)
    try:
        s16 = ort.InferenceSession(str(exp / "model.fp16.onnx"), providers=["CPUExecutionProvider"])
    except Exception as e:  # pragma: no cover - CPU provider without fp16 kernels
        pytest.skip(f"CPU provider cannot run the fp16 graph: {e}")
    s32 = ort.InferenceSession(str(exp / "model.onnx"), providers=["CPUExecutionProvider"])
    a = s16.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    b = s32.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    assert a.dtype == np.float32 and np.abs(a - b).max() < 5e-2


def test_missing_run_dir(tmp_path):
    from export.onnx_export import export_run

    with pytest.raises(DistillError, match="does not exist"):
        export_run(tmp_path / "nope")


def test_run_without_student(tmp_path, tiny_run):
    from export.onnx_export import export_run

    run = tmp_path / "half"
    run.mkdir()
    shutil.copy(tiny_run / "config.json", run / "config.json")
    with pytest.raises(DistillError, match="student/"):
        export_run(run)
    (run / "student").mkdir()  # present but empty
    with pytest.raises(DistillError, match="missing"):
        export_run(run)


def test_unwritable_out(tmp_path, tiny_run):
    from export.onnx_export import export_run

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DistillError, match="not writable"):
        export_run(tiny_run, out=blocker / "export")
    with pytest.raises(DistillError, match="not a folder"):
        export_run(tiny_run, out=blocker)
    for bad in (tiny_run, tiny_run / "student", tiny_run.parent):  # never replace the run or its models
        with pytest.raises(DistillError, match="would replace"):
            export_run(tiny_run, out=bad)
    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DistillError, match="not an export"):
        export_run(tiny_run, out=other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_no_partial_onnx_after_failure(tmp_path, tiny_run, monkeypatch):
    import export.onnx_export as ex
    import export.quantize as q

    def boom(*a, **k):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(q, "quantize_dynamic_int8", boom)
    report_before = (tiny_run / "report.json").read_text()
    # a good export already in place stays untouched
    out = tmp_path / "exp"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"good model")
    (out / "manifest.json").write_text("{}")
    with pytest.raises(DistillError, match="quantizer exploded"):
        ex.export_run(tiny_run, out=out, parity=False, latency_runs=0, quiet=True)
    assert (out / "model.onnx").read_bytes() == b"good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    # a fresh folder is not created at all
    with pytest.raises(DistillError):
        ex.export_run(tiny_run, out=tmp_path / "fresh", parity=False, latency_runs=0, quiet=True)
    assert not (tmp_path / "fresh").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    assert (tiny_run / "report.json").read_text() == report_before


def _failing_gate(monkeypatch, fail_while=lambda: True):
    """Make the INT8 gate fail (with the real numbers) while ``fail_while()`` holds."""
    import export.parity as par

    real = par.int8_gate

    def gate(*a, **k):
        g = real(*a, **k)
        if fail_while():
            g.update(passed=False, reason="forced to fail by the test")
        return g

    monkeypatch.setattr(par, "int8_gate", gate)


def _run_tree(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()
            and "export" not in p.relative_to(run_dir).parts}


def test_missed_target_returns_false_and_cli_exits_1(tmp_path, tiny_run, monkeypatch):
    """A failing INT8 gate: every dynamic granularity is tried, the model is still written, exit 1;
    the run folder is not modified."""
    from typer.testing import CliRunner

    import export.onnx_export as ex
    from distill.cli import app

    _failing_gate(monkeypatch)
    _fast_latency(monkeypatch)
    before = _run_tree(tiny_run)
    out = tmp_path / "drift"
    res = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(out), "--opset", "17", "--int8", "dynamic"])
    assert res.exit_code == 1, res.output
    assert "parity" in res.output and "forced to fail" in res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity"]["passed"] is False and any("INT8 (dynamic) parity gate" in f for f in m["parity"]["failures"])
    assert [(c["method"], c["per_channel"]) for c in m["parity"]["int8_candidates"]] == [("dynamic", True),
                                                                                       ("dynamic", False)]
    assert (out / "model.int8.onnx").is_file() and not (out / "_work").exists()
    assert ex.export_run(tiny_run, out=tmp_path / "drift2", per_channel=False, int8="dynamic", latency_runs=0,
                         quiet=True) is False
    m2 = json.loads((tmp_path / "drift2" / "manifest.json").read_text())
    assert m2["models"]["int8"]["per_channel"] is False and len(m2["parity"]["int8_candidates"]) == 1
    assert m2["latency_ms"] == {}
    assert _run_tree(tiny_run) == before


def test_auto_falls_back_to_static_when_dynamic_fails(tmp_path, tiny_run, monkeypatch):
    """--int8 auto: dynamic (both granularities) forced to miss the gate, static is tried and kept with its
    real (passing) gate; the manifest records every gate result."""
    import export.quantize as q
    from export.onnx_export import export_run

    static_called = []
    real_static = q.quantize_static_int8
    monkeypatch.setattr(q, "quantize_static_int8", lambda *a, **k: static_called.append(1) or real_static(*a, **k))
    _failing_gate(monkeypatch, fail_while=lambda: not static_called)
    assert export_run(tiny_run, out=tmp_path / "auto", latency_runs=0, quiet=True, calibration_size=32) is True
    m = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    cands = m["parity"]["int8_candidates"]
    assert [(c["method"], c["gate"]["passed"], c["kept"]) for c in cands] == [
        ("dynamic", False, False), ("dynamic", False, False), ("static", True, True)]
    assert m["models"]["int8"]["method"] == "static" and m["parity"]["int8"]["method"] == "static"
    assert m["models"]["int8"]["calibration"]["texts"] == 32
    assert "-> kept static" in m["parity"]["int8_selection"]
    assert m["models"]["int8"]["quantized_ops"].get("QuantizeLinear")


def test_static_int8_is_qdq_and_within_the_gate(tmp_path, tiny_run, monkeypatch):
    """--int8 static: a QDQ graph (QuantizeLinear/DequantizeLinear, int8 weights) calibrated on the run's training
    texts, attention products left fp32, predictions within the gate of the fp32 model; nothing is written
    outside the export folder (not even in the working directory)."""
    import onnx
    import onnxruntime as ort

    from distill.modeling import load_classifier
    from export.onnx_export import export_run
    from serve.runtime import ort_logits, padded_batches, token_ids

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _run_tree(tiny_run)
    out = tmp_path / "static"
    assert export_run(tiny_run, out=out, int8="static", latency_runs=0, quiet=True) is True
    assert list(cwd.iterdir()) == [] and _run_tree(tiny_run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "static"]
    m = json.loads((out / "manifest.json").read_text())
    info = m["models"]["int8"]
    assert info["method"] == "static" and info["format"] == "QDQ" and info["per_channel"] is True
    split = json.loads((tiny_run / "split.json").read_text())
    assert info["calibration"]["texts"] == min(256, len(split["ids"]["train"]))
    assert info["calibration"]["method"] == "MinMax" and info["excluded"]["activation_matmuls"] > 0
    g = onnx.load(str(out / "model.int8.onnx")).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert "QAttention" not in ops and "MatMulInteger" not in ops  # not the dynamic quantizer's ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in g.initializer)
    # the MatMuls of two activations (attention products, attentive pooling) are not quantized: a quantized
    # QDQ MatMul has both inputs dequantized, these keep at least one float input
    inits = {t.name for t in g.initializer}
    deq = {n.output[0]: n.input[0] for n in g.node if n.op_type == "DequantizeLinear"}
    act_mm = [n for n in g.node if n.op_type == "MatMul" and not any(i in inits or deq.get(i) in inits
                                                                        for i in n.input)]
    assert len(act_mm) == info["excluded"]["activation_matmuls"]
    assert all(not all(i in deq for i in n.input) for n in act_mm)
    weight_mm = [n for n in g.node if n.op_type == "MatMul" and n not in act_mm]
    assert weight_mm and all(all(i in deq for i in n.input) for n in weight_mm)
    # predictions: recomputed here against the fp32 ONNX model
    texts, labels = _test_texts(tiny_run)
    _, tok, _ = load_classifier(tiny_run / "student")
    singles = padded_batches(token_ids(tok, texts, m["max_length"]), m["tokenizer"]["pad_id"], 1)
    p8 = ort_logits(ort.InferenceSession(str(out / "model.int8.onnx")), singles, len(texts)).argmax(-1)
    p32 = ort_logits(ort.InferenceSession(str(out / "model.onnx")), singles, len(texts)).argmax(-1)
    y = np.array(labels)
    b, c = int(((p32 == y) & (p8 != y)).sum()), int(((p32 != y) & (p8 == y)).sum())
    gate = m["parity"]["int8"]["gate"]
    assert (gate["b"], gate["c"]) == (b, c) and gate["passed"]
    assert 100 * (b - c) / len(y) <= 0.5 or gate["p_value"] >= 0.05
    assert gate["agreement_pct"] == pytest.approx(100 * (p8 == p32).mean())


def test_optimizer_skips_unknown_architecture(tmp_path, tiny_run):
    import onnxruntime as ort

    from distill.modeling import load_classifier
    from export.graph import export_fp32, optimize_onnx

    model, _, _ = load_classifier(tiny_run / "student")
    export_fp32(model, tmp_path / "raw.onnx", opset=17)
    info = optimize_onnx(tmp_path / "raw.onnx", tmp_path / "opt.onnx", "mpnet", 2, 32)
    assert info["fusion"] == "skipped" and "mpnet" in info["reason"]
    sess = ort.InferenceSession(str(tmp_path / "opt.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"input_ids": np.array([[2, 7, 3]], np.int64),
                                "attention_mask": np.ones((1, 3), np.int64)})[0]
    assert out.shape == (1, 4)


def test_run_with_export_flag(tmp_path, tiny_teachers, tiny_csv, monkeypatch):
    """`distill run --export` trains and exports in one go (the export's summary stays in its folder)."""
    from typer.testing import CliRunner

    from conftest import tiny_run_args

    from distill.cli import app

    _fast_latency(monkeypatch)
    out = tmp_path / "run"
    args = tiny_run_args(out, tiny_teachers, tiny_csv, baselines="") + ["--export", "--allow-drift", "--student-epochs", "1",
                                                                         "--teacher-epochs", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "export" / "manifest.json").read_text())
    assert m["source_run"] == str(out.resolve()) and (out / "export" / "model.int8.onnx").is_file()
    assert (out / "export" / "EXPORT.md").is_file() and "## Export" not in (out / "report.md").read_text()


def test_student_that_is_not_a_transformer(tmp_path, tiny_run, monkeypatch):
    """A classifier with no ``encoder`` (a TextCNN-like ``nn.Module``, ``classifier.json`` architecture
    "textcnn"): exported without the transformer optimiser, latency inputs from len(tokenizer), static INT8
    quantizes its Conv/Gemm/Gather; ONNX fp32 equals PyTorch."""
    from types import SimpleNamespace

    import onnx
    import onnxruntime as ort
    import torch
    from torch import nn

    import distill.modeling as dm
    from export.onnx_export import export_run

    _, tok, meta = dm.load_classifier(tiny_run / "student")

    class TinyCNN(nn.Module):
        def __init__(self, vocab: int, num_labels: int):
            super().__init__()
            torch.manual_seed(0)
            self.emb = nn.Embedding(vocab, 16)
            self.conv = nn.Conv1d(16, 24, kernel_size=3, padding=1)
            self.out = nn.Linear(24, num_labels)

        def forward(self, input_ids, attention_mask):  # (B, L) x2 -> logits (B, C)
            h = torch.relu(self.conv(self.emb(input_ids).transpose(1, 2)))  # (B, 24, L)
            h = h.masked_fill(attention_mask[:, None, :] == 0, -1e4).amax(-1)
            return SimpleNamespace(logits=self.out(h))

    cnn = TinyCNN(len(tok), meta["num_labels"]).eval()
    assert not hasattr(cnn, "encoder")
    monkeypatch.setattr(dm, "load_classifier", lambda folder, device="cpu": (cnn, tok, {**meta,
                                                                                       "architecture": "textcnn"}))
    out = tmp_path / "cnn"
    export_run(tiny_run, out=out, int8="dynamic", latency_runs=2, quiet=True)
    m = json.loads((out / "manifest.json").read_text())
    assert m["student"]["architecture"] == "textcnn" and m["student"]["model_type"] is None
    assert m["optimizer"]["fusion"] == "skipped" and m["optimizer"]["reason"] == "skipped: not a transformer"
    assert m["parity"]["fp32"]["max_abs_logit_diff"] <= 1e-4 and m["latency_ms"]["seq_len"] == 128
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "Conv" in ops and "Attention" not in ops
    ids = np.array([[2, len(tok) - 1, 7, 3]], np.int64)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = cnn(torch.from_numpy(ids), torch.ones((1, 4), dtype=torch.long)).logits.numpy()
    assert np.abs(sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones((1, 4), np.int64)})[0]
                  - ref).max() <= 1e-4
    export_run(tiny_run, out=tmp_path / "cnn-static", int8="static", latency_runs=0, quiet=True)
    g = onnx.load(str(tmp_path / "cnn-static" / "model.int8.onnx")).graph
    feeds_conv = {i for n in g.node if n.op_type == "Conv" for i in n.input}
    assert any(n.op_type == "DequantizeLinear" and n.output[0] in feeds_conv for n in g.node)
