"""`distill reference RUN`: the models users would pick instead, on the run's own split (tiny models)."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from distill.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def ref_run(tiny_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    return run


def test_reference_models_on_the_run_split(ref_run):
    pytest.importorskip("setfit")
    pytest.importorskip("model2vec")
    res = runner.invoke(app, ["reference", str(ref_run), "--setfit-steps", "4", "--seeds", "2"])
    assert res.exit_code == 0, res.output
    r = json.loads((ref_run / "reference" / "results.json").read_text())
    names = [m["model"] for m in r["models"]]
    assert names[0] == "TF-IDF + LR" and sum(n.startswith("frozen ") for n in names) == 2
    assert any(n.startswith("model2vec") for n in names) and any(n.startswith("SetFit") for n in names)
    for m in r["models"]:
        assert m["test"]["macro_f1"]["values"] and 0 <= m["test"]["macro_f1"]["mean"] <= 100
        assert m["params"] > 0 and m["file_mb"] > 0 and m["latency_ms"]["b1"] > 0 and m["latency_ms"]["b32"] > 0
        assert m["seeds"] == (2 if m["seeded"] else 1)
    assert set(r["student"]["strategies"]) == {"mtbert", "nokd"}
    # weights are stored without pickle
    files = [p.name for p in (ref_run / "reference").rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".joblib", ".bin"))], files
    # SetFit's trainer scratch folder is not left in the run
    assert not [p for p in (ref_run / "reference").iterdir() if p.name.startswith(".")], list((ref_run / "reference").iterdir())
    md = (ref_run / "reference" / "REFERENCE.md").read_text()
    assert "4 contrastive steps (CPU cap)" in md and "student: mtbert" in md
    assert json.loads((ref_run / "report.json").read_text())["reference"]["models"][0]["model"] == "TF-IDF + LR"


def test_reference_rejects_unknown_models(ref_run):
    res = runner.invoke(app, ["reference", str(ref_run), "--models", "tfidf-lr,bm25"])
    assert res.exit_code == 2 and "unknown reference model 'bm25'" in res.output
