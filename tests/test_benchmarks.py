"""Smoke tests of `distill bench` (benchmarks/) on the tiny run: quick mode, structure only (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.errors import DistillError


@pytest.fixture(scope="module")
def bench_run(tiny_run, tmp_path_factory):
    """A private copy of the tiny run (the bench writes export/ and bench/ into it)."""
    dst = tmp_path_factory.mktemp("bench") / "tiny"
    shutil.copytree(tiny_run, dst, symlinks=False)
    return dst


@pytest.fixture(scope="module")
def bench_results(bench_run):
    res = CliRunner().invoke(app, ["bench", str(bench_run), "--quick"])
    assert res.exit_code == 0, res.output
    return json.loads((bench_run / "bench" / "results.json").read_text())


def test_outputs_written(bench_run, bench_results):
    out = bench_run / "bench"
    assert (out / "REPORT.md").is_file()
    for p in bench_results["plots"]:
        assert (out / p).is_file() and (out / p).stat().st_size > 1000
    assert {"accuracy_vs_latency.png", "accuracy_vs_size.png", "latency_vs_batch.png",
            "training_throughput.png"} <= set(bench_results["plots"])
    text = (out / "REPORT.md").read_text()
    for section in ("## Machine and software", "## Inference", "## Serving", "## Training cost", "TextBrewer"):
        assert section in text
    assert bench_results["machine"]["cpu"] and bench_results["machine"]["software"]["torch"]


def test_inference_variants_and_ratios(bench_results):
    inf = bench_results["inference"]
    assert not inf.get("skipped"), inf
    names = {v["name"] for v in inf["variants"]}
    assert {"student", "ensemble", "teacher_0", "teacher_1"} <= names
    for v in inf["variants"]:
        assert set(v["latency"]) == {"1", "8"}  # quick mode
        for lat in v["latency"].values():
            assert lat["n"] >= 5 and lat["p50_ms"] > 0 and lat["p99_ms"] >= lat["p50_ms"]
            assert lat["throughput_texts_per_s"] == pytest.approx(lat["batch_size"] / (lat["p50_ms"] / 1000))
        assert v["size_mb"] > 0 and 0 <= v["test"]["accuracy"] <= 100 and v["test"]["n"] > 0
    r = inf["ratios"]
    assert r["student"]["vs_student_fp32"]["speedup_p50"]["1"] == pytest.approx(1.0)
    assert r["ensemble"]["vs_ensemble"]["size_x_smaller"] == pytest.approx(1.0)
    assert r["student"]["vs_ensemble"]["size_x_smaller"] > 1.0  # the student is smaller than the ensemble
    by = {v["name"]: v for v in inf["variants"]}
    assert r["student"]["vs_ensemble"]["speedup_p50"]["8"] == pytest.approx(
        by["ensemble"]["latency"]["8"]["p50_ms"] / by["student"]["latency"]["8"]["p50_ms"])
    if "onnx_int8" in names:  # the export component may not be there yet
        import os

        exp = bench_results["inference"]["export"]["dir"]
        manifest = json.loads(open(os.path.join(exp, "manifest.json")).read())
        f = os.path.join(exp, manifest["models"]["int8"]["file"])
        assert by["onnx_int8"]["size_mb"] == pytest.approx(os.path.getsize(f) / 1e6)


def test_training_and_textbrewer(bench_results):
    tr = bench_results["training"]
    assert not tr.get("skipped"), tr
    assert tr["steps"] == 10
    assert {"nokd", "mtbert_online", "avg_online"} <= set(tr["fresh"])
    assert "mtbert_cache" in tr["fresh"] and tr["ratios"]["cache_speedup_mtbert"] > 0
    for v in tr["fresh"].values():
        assert v["samples_per_s"] > 0 and v["samples"] > 0
    assert tr["recorded"]["phases_s"] and tr["recorded"]["strategies"]
    tb = tr["textbrewer"]
    if importlib.util.find_spec("textbrewer") is None:  # installed by scripts/install.sh
        assert tb.get("skipped") and tb["reason"]
    else:
        assert not tb.get("skipped"), tb
        assert tb["textbrewer"]["steps"] == 10 and tb["textbrewer"]["samples_per_s"] > 0
        assert 0 <= tb["textbrewer"]["test"]["accuracy"] <= 100
        assert tb["ratios"]["avg_online_over_textbrewer_samples_per_s"] > 0


def test_serving_section(bench_results):
    sv = bench_results["serving"]
    assert not sv.get("skipped"), sv
    assert [lv["clients"] for lv in sv["levels"]] == [1, 4, 16]
    assert all(lv["requests"] > 0 for lv in sv["levels"])


def test_missing_run_dir_is_a_distill_error(tmp_path):
    from benchmarks.run_all import main

    with pytest.raises(DistillError, match="distill run"):
        main(tmp_path / "nope", quick=True)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(DistillError, match="--resume"):
        main(tmp_path / "half", quick=True)
    res = CliRunner().invoke(app, ["bench", str(tmp_path / "nope"), "--quick"])
    assert res.exit_code == 2 and "distill run" in res.output
