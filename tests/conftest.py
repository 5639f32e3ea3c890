"""Shared fixtures: tiny teachers/students built from configs, and small real-looking datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.testing import build_tiny_model, make_texts, tiny_run_args, write_tiny_csv  # noqa: F401 (re-exported)

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _teacher_store_env(tmp_path_factory):
    """Runs that name no --teacher-store use a session folder, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DISTILL_TEACHER_STORE", str(tmp_path_factory.mktemp("default-store")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory) -> list[Path]:
    """Two tiny heterogeneous teachers: BERT (4 layers, hidden 32) and MPNet (2 layers, hidden 48, other tokenizer)."""
    root = tmp_path_factory.mktemp("teachers")
    return [build_tiny_model(root / "bert", "bert", 32, 4), build_tiny_model(root / "mpnet", "mpnet", 48, 2)]


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """A 120-row CSV with header (id, title, body, label)."""
    return write_tiny_csv(tmp_path_factory.mktemp("data") / "news.csv", 30)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_teachers, tiny_csv) -> Path:
    """A finished tiny `distill run` folder (student/, teachers/, split.json, report.json...)."""
    from typer.testing import CliRunner

    from distill.cli import app

    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = CliRunner().invoke(app, tiny_run_args(out, tiny_teachers, tiny_csv, baselines="nokd",
                                                teacher_store=out.parent / ".teacher-store"))
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory) -> Path:
    """The tiny run's ONNX export (``export.onnx_export.export_run`` on a copy of the run; its parity
    verdict on a random tiny model is ignored)."""
    import shutil

    from export.onnx_export import export_run

    root = tmp_path_factory.mktemp("serve")
    run = root / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("teachers", ".teacher-store"))
    out = root / "export"
    export_run(run, out=out, latency_runs=0, quiet=True)  # False = a parity target missed; fine here
    assert (out / "manifest.json").is_file()
    return out
