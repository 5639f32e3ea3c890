"""`distill predict`: label a file with a run's student (PyTorch, or ONNX Runtime on the export)."""

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from distill.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def exported_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with an ONNX export (parity verdict of the random tiny model ignored)."""
    from export.onnx_export import export_run

    run = tmp_path_factory.mktemp("predict") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("teachers", "checkpoints"))
    export_run(run)
    return run


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_torch_reproduces_the_run_metrics(tiny_run, tiny_csv, tmp_path):
    out = tmp_path / "pred.csv"
    res = runner.invoke(app, ["predict", str(tiny_run), str(tiny_csv), "--out", str(out), "--backend", "torch"])
    assert res.exit_code == 0, res.output
    assert "texts/s" in res.output and "macro-F1" in res.output and "pytorch" in res.output
    rows = _read_csv(out)
    labels = json.loads((tiny_run / "labels.json").read_text())["label_names"]
    assert len(rows) == 120 and list(rows[0]) == ["id", "label", "score"] + [f"p_{n}" for n in labels] + ["gold"]
    for r in rows[:5]:
        probs = [float(r[f"p_{n}"]) for n in labels]
        assert abs(sum(probs) - 1) < 1e-4 and r["label"] == labels[int(np.argmax(probs))]
    # on the run's test rows the predictions give exactly the report's test accuracy of the saved student
    test_ids = set(json.loads((tiny_run / "split.json").read_text())["ids"]["test"])
    test = [r for r in rows if r["id"] in test_ids]
    acc = 100 * np.mean([r["label"] == r["gold"] for r in test])
    report = json.loads((tiny_run / "report.json").read_text())
    assert acc == pytest.approx(report["student"]["test"]["accuracy"], abs=1e-6)


def test_predict_onnx_matches_pytorch_and_reads_plain_text(exported_run, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("market shares profit bank\n\nmatch team player goal season\nsoftware computer phone\n")
    outs = {}
    for backend in ("onnx", "torch"):
        out = tmp_path / f"{backend}.jsonl"
        res = runner.invoke(app, ["predict", str(exported_run), str(texts), "-o", str(out), "--backend", backend,
                                  "--model", "fp32"])
        assert res.exit_code == 0, res.output
        assert "macro-F1" not in res.output  # no labels in a plain text file
        outs[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in outs["onnx"]] == ["1", "3", "4"]
    for a, b in zip(outs["onnx"], outs["torch"]):
        assert a["label"] == b["label"]
        assert all(abs(a[k] - b[k]) < 1e-4 for k in a if k.startswith("p_"))


def test_predict_errors(tiny_run, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("title,body,label\nA,some text,weather\n")
    res = runner.invoke(app, ["predict", str(tiny_run), str(bad), "--backend", "torch"])
    assert res.exit_code == 2 and "label 'weather' (row '2') is not one of the model's labels" in res.output
    assert not (tmp_path / "bad.csv.predictions.csv").exists()
    res = runner.invoke(app, ["predict", str(tiny_run), str(bad), "--out", str(tmp_path / "x.parquet")])
    assert res.exit_code == 2 and ".csv or .jsonl" in res.output
    res = runner.invoke(app, ["predict", str(tmp_path), str(bad)])
    assert res.exit_code == 2 and "neither an ONNX export" in res.output
    plain = tmp_path / "plain-run"  # another test may have exported tiny_run in place
    shutil.copytree(tiny_run, plain, ignore=shutil.ignore_patterns("teachers", "checkpoints", "export"))
    res = runner.invoke(app, ["predict", str(plain), str(bad), "--backend", "onnx"])
    assert res.exit_code == 2 and "no ONNX export" in res.output
