"""A teacher given as a finetuned classifier folder (e.g. a run's teachers/teacher_0) is used as given:
it keeps its weights and head, is not co-finetuned, and the other teachers are co-finetuned beside it."""

import json

from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_run_args
from distill.cli import app
from distill.teachers import given_teacher_meta

runner = CliRunner()


def _run(out, teachers, data, **extra):
    res = runner.invoke(app, tiny_run_args(out, teachers, data, **extra))
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())


def test_a_finetuned_teacher_folder_is_used_as_given(tmp_path, tiny_teachers, tiny_csv):
    first = tmp_path / "first"  # a one-teacher run: its teachers/teacher_0 is a classifier for these labels
    r1 = _run(first, [tiny_teachers[0]], tiny_csv, baselines="", student_epochs=1, teacher_epochs=1,
              teacher_store=tmp_path / "s1")
    given = first / "teachers" / "teacher_0"
    out = tmp_path / "second"
    r2 = _run(out, [given, tiny_teachers[1]], tiny_csv, baselines="nokd", student_epochs=1,
              teacher_store=tmp_path / "s2")
    assert r2["teacher_training"]["given"] == [str(given)]
    # the given teacher is unchanged: same encoder and head weights, same predictions
    for f in ("model.safetensors", "head.safetensors"):
        a, b = load_file(str(given / f)), load_file(str(out / "teachers" / "teacher_0" / f))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert r2["teachers"][0]["test"] == r1["teachers"][0]["test"]
    # only the other teacher was co-finetuned (one CE term per epoch), and it did learn
    rec = json.loads(next((tmp_path / "s2").glob("*/teachers.json")).read_text())
    assert rec["given"] == [str(given)] and len(rec["epochs"]) == 2
    assert all(set(e["components"]) == {"ce_teacher_1"} for e in rec["epochs"])  # the run's numbering
    assert "used as given" in (out / "report.md").read_text()
    # a second run with the same teachers reuses the store entry
    r3 = _run(tmp_path / "third", [given, tiny_teachers[1]], tiny_csv, baselines="", student_epochs=1,
              teacher_store=tmp_path / "s2")
    assert r3["teacher_training"]["reused"] and r3["teachers"] == r2["teachers"]


def test_a_classifier_for_other_labels_is_a_pretrained_encoder(tiny_run):
    folder = tiny_run / "teachers" / "teacher_0"
    labels = json.loads((folder / "classifier.json").read_text())["label_names"]
    assert given_teacher_meta(folder, "t", labels)["label_names"] == labels
    assert given_teacher_meta(folder, "t", labels[:-1] + ["weather"]) is None


def test_a_given_teacher_with_another_head_size_fails_before_training(tmp_path, tiny_run, tiny_teachers, tiny_csv):
    folder = tiny_run / "teachers" / "teacher_0"  # head dim 32
    res = runner.invoke(app, tiny_run_args(tmp_path / "run", [folder, tiny_teachers[1]], tiny_csv, head_dim=48))
    assert res.exit_code != 0
    assert "must share the run's head space" in res.output and "head dim 32" in res.output
    assert not (tmp_path / "run" / "teachers").exists()
