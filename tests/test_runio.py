"""Atomic writes and the sweep of what a killed writer leaves behind (``distill.runio``)."""

from __future__ import annotations

import os
import subprocess

import pytest

from distill.runio import atomic_dir, atomic_path, atomic_write_text, sweep_partials


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_atomic_path_replaces_on_success_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.startswith(f".a.json.{os.getpid()}.") and tmp.name.endswith(".tmp")
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_sweep_removes_dead_writers_partials_and_keeps_live_ones(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    (tmp_path / "sub").mkdir()
    stale_file = tmp_path / "sub" / f".report.json.{dead}.k2j3h4g5.tmp"
    stale_file.write_text("{")
    stale_dir = tmp_path / f".student.{dead}.tmp-abc123"
    (stale_dir / "x").mkdir(parents=True)
    live = tmp_path / f".cache.safetensors.{me}.q1w2e3r4.tmp"
    live.write_text("in progress")
    good = tmp_path / "report.json"
    good.write_text("{}")
    done = sweep_partials(tmp_path)
    assert len(done) == 2 and all(line.startswith("removed partial") for line in done)
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and good.exists()
    assert sweep_partials(tmp_path / "missing") == []


def test_sweep_restores_the_old_folder_when_the_writer_died_between_renames(tmp_path):
    dead = _dead_pid()
    old = tmp_path / f".student.old-{dead}"
    old.mkdir()
    (old / "model.safetensors").write_text("complete")
    done = sweep_partials(tmp_path)
    assert done == [f"restored {tmp_path / 'student'} from {old.name}"]
    assert (tmp_path / "student" / "model.safetensors").read_text() == "complete"
    # the old copy beside a present folder is superseded and removed
    old.mkdir()
    assert sweep_partials(tmp_path) == [f"removed superseded {old}"]


def test_sweep_only_looks_at_one_name(tmp_path):
    dead = _dead_pid()
    mine, other = tmp_path / f".export.{dead}.tmp-x1", tmp_path / f".student.{dead}.tmp-x2"
    mine.mkdir()
    other.mkdir()
    assert sweep_partials(tmp_path, only="export") == [f"removed partial {mine}"]
    assert other.exists()


def test_atomic_dir_names_carry_the_pid(tmp_path):
    with atomic_dir(tmp_path / "m") as tmp:
        assert tmp.name.startswith(f".m.{os.getpid()}.tmp-")
        (tmp / "f").write_text("x")
    assert (tmp_path / "m" / "f").read_text() == "x"
