"""Damaged artifacts (issue: reliability campaign, point 2): a cut-short or altered file in the teacher
store, the teacher-output cache, a run's students, the export, or a run folder missing a file is caught
where it is loaded, with a message naming the file and the fix; derived data is rebuilt and the log says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.integrity import CorruptArtifact, verify_checksums
from conftest import tiny_run_args

runner = CliRunner()


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _flip(p: Path, at: float = 0.8) -> None:
    """Alter one byte in place (hard links see it too), far from the safetensors header."""
    with open(p, "r+b") as fh:
        fh.seek(int(p.stat().st_size * at))
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))


def _metrics(run: Path) -> dict:
    r = json.loads((run / "report.json").read_text())
    return {"teachers": [t["test"] for t in r["teachers"]], "runs": {s: [x["test"] for x in v] for s, v in r["runs"].items()}}


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("export"))
    return dst


def test_checksums_catch_cut_short_altered_and_missing_files(tiny_run, tmp_path):
    student = _copy_run(tiny_run, tmp_path / "r") / "student"
    assert verify_checksums(student, "fix")
    listed = json.loads((student / "checksums.json").read_text())["files"]
    assert {"model.safetensors", "head.safetensors", "classifier.json", "tokenizer.json"} <= set(listed)
    _flip(student / "head.safetensors")
    with pytest.raises(CorruptArtifact, match=r"head.safetensors: sha256 differs .*\(altered\)\. fix"):
        verify_checksums(student, "fix")
    _flip(student / "head.safetensors")  # flipped back: intact again
    assert verify_checksums(student, "fix")
    _truncate(student / "model.safetensors")
    with pytest.raises(CorruptArtifact, match=r"model.safetensors: has \d+ bytes, \d+ were written"):
        verify_checksums(student, "fix")
    (student / "model.safetensors").unlink()
    with pytest.raises(CorruptArtifact, match="model.safetensors: is missing"):
        verify_checksums(student, "fix")


def test_damaged_teacher_store_and_cache_are_rebuilt_with_the_same_results(tmp_path, tiny_teachers, tiny_csv):
    store = tmp_path / "store"
    first = tmp_path / "a"
    assert runner.invoke(app, tiny_run_args(first, tiny_teachers, tiny_csv, teacher_store=store)).exit_code == 0
    entry = next(p for p in store.iterdir() if p.is_dir())

    cache = next(entry.glob("outputs-*.safetensors"))
    _flip(cache)
    res = runner.invoke(app, tiny_run_args(tmp_path / "b", tiny_teachers, tiny_csv, teacher_store=store))
    assert res.exit_code == 0, res.output
    log = (tmp_path / "b" / "log.txt").read_text()
    assert "reusing finetuned teachers" in log
    assert f"teacher-output cache {cache}: tensors differ from the digest written with them (altered); recomputing" in log
    assert _metrics(tmp_path / "b") == _metrics(first)

    _truncate(entry / "teacher_1" / "model.safetensors")
    res = runner.invoke(app, tiny_run_args(tmp_path / "c", tiny_teachers, tiny_csv, teacher_store=store))
    assert res.exit_code == 0, res.output
    log = (tmp_path / "c" / "log.txt").read_text()
    assert f"teacher store entry {entry} is damaged" in log and "teacher_1/model.safetensors" in log
    assert "finetuning the teachers again" in log and "co-finetuning 2 teacher(s)" in log
    assert _metrics(tmp_path / "c") == _metrics(first)
    assert verify_checksums(entry / "teacher_1", "")  # rebuilt


def test_resume_retrains_a_damaged_student_seed(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "r")
    _flip(run / "students" / "mtbert-seed13" / "model" / "head.safetensors")
    cfg = json.loads((run / "config.json").read_text())
    args = tiny_run_args(run, [Path(t) for t in cfg["teachers"]], Path(cfg["data"]), baselines="nokd",
                         teacher_store=cfg["teacher_store"] or tiny_run.parent / ".teacher-store")
    res = runner.invoke(app, args + ["--resume"])
    assert res.exit_code == 0, res.output
    log = (run / "log.txt").read_text()
    assert "student/mtbert/seed13: the saved student is damaged" in log and "training this seed again" in log
    assert _metrics(run) == _metrics(tiny_run)
    assert verify_checksums(run / "students" / "mtbert-seed13" / "model", "")


def test_export_refuses_a_damaged_student_naming_the_file_and_the_fix(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "r")
    _truncate(run / "student" / "model.safetensors")
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "student/model.safetensors: has" in out and "cut short or altered" in out
    assert "distill run --out RUN --resume" in out and "Traceback" not in res.output
    assert not (run / "export").exists()


@pytest.mark.parametrize("name, damage, message", [
    ("split.json", "missing", "missing split.json; not a distill run folder, or the run stopped before writing it"),
    ("config.json", "garbled", "config.json: damaged, not valid JSON"),
])
def test_run_folder_with_a_missing_or_damaged_file(tiny_run, tmp_path, name, damage, message):
    run = _copy_run(tiny_run, tmp_path / "r")
    if damage == "missing":
        (run / name).unlink()
    else:
        (run / name).write_text('{"data": "x", ')
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output
