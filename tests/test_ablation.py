"""`distill ablate`: the MT-BERT Fig. 5 ablation over one job file, on tiny teachers."""

import json

import yaml
from typer.testing import CliRunner

from distill.cli import app

runner = CliRunner()


def _job(tmp_path, teachers, data, **extra):
    job = {"data": str(data), "text_cols": ["title", "body"], "max_length": 32, "teachers": [str(t) for t in teachers],
           "teacher_epochs": 1, "teacher_train_layers": 0, "teacher_lr": 1e-3, "teacher_batch_size": 8,
           "student_epochs": 1, "student_lr": 1e-3, "student_batch_size": 8, "threads": 1, "baselines": ["nokd"],
           "weak_teacher_margin": None, **extra}
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(job))
    return p


def test_ablation_rows_share_teachers_and_cache(tmp_path, tiny_teachers, tiny_csv):
    job = _job(tmp_path, tiny_teachers, tiny_csv)
    out = tmp_path / "abl"
    res = runner.invoke(app, ["ablate", "--config", str(job), "--out", str(out), "--variants", "no_hidden,t1,t2",
                              "--repeats", "2"])
    assert res.exit_code == 0, res.output
    full = json.loads((out / "full" / "report.json").read_text())
    hid = json.loads((out / "no_hidden" / "report.json").read_text())
    # the extra flag reached every run; the variant changed one setting and dropped the baselines
    assert full["config"]["repeats"] == hid["config"]["repeats"] == 2
    # full = the paper's loss (distill's own default has w_hid = 0): the preset reached every run
    assert full["config"]["settings"]["mtbert"] == {"preset": "paper"}
    assert hid["config"]["settings"]["mtbert"] == {"preset": "paper", "w_hid": 0.0} and hid["config"]["baselines"] == []
    assert set(full["strategies"]) == {"mtbert", "nokd"} and set(hid["strategies"]) == {"mtbert"}
    # one teacher store: the variant reused the full run's co-finetuned teachers and their cached outputs
    assert hid["teacher_store"] == full["teacher_store"] and str(out / "teachers") in hid["teacher_store"]
    assert hid["cache"]["reused"] is True and hid["teacher_training"]["reused"] is True
    assert not (out / "t1").exists()  # the job keeps the paper's t = 1: that row is the full run
    abl = json.loads((out / "ablation.json").read_text())
    rows = {r["name"]: r for r in abl["rows"]}
    assert list(rows) == ["full", "no_hidden", "t1", "t2", "nokd"] and rows["t1"]["same_as_full"]
    assert rows["nokd"]["test"]["values"] == full["strategies"]["nokd"]["test"]["macro_f1"]["values"]
    # the change is paired by seed, with the standard error of the per-seed differences
    hv, fv = (x["strategies"]["mtbert"]["test"]["macro_f1"]["values"] for x in (hid, full))
    diffs = [a - b for a, b in zip(hv, fv)]
    assert abs(rows["no_hidden"]["se_full"]["test"] - abs(diffs[0] - diffs[1]) / 2) < 1e-9  # sd/sqrt(2) of 2 values
    d = rows["no_hidden"]["delta_full"]["test"]
    assert abs(d - (hid["strategies"]["mtbert"]["test"]["macro_f1"]["mean"]
                    - full["strategies"]["mtbert"]["test"]["macro_f1"]["mean"])) < 1e-9
    md = (out / "ABLATION.md").read_text()
    assert "per seed, dev / test" in md and "standard error" in md
    assert "w/o hidden loss (w_hid = 0)" in md and "temperature 1 (= full)" in md and "no-KD student" in md
    # a second call resumes every run (nothing is trained again) and rebuilds the same table
    before = {n: (out / n / "student" / "model.safetensors").stat().st_mtime_ns for n in ("full", "no_hidden", "t2")}
    res = runner.invoke(app, ["ablate", "--config", str(job), "--out", str(out), "--variants", "no_hidden,t1,t2",
                              "--repeats", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "ablation.json").read_text())["rows"] == abl["rows"]
    assert "--resume" in json.loads((out / "ablation.json").read_text())["commands"]["no_hidden"]
    assert before == {n: (out / n / "student" / "model.safetensors").stat().st_mtime_ns for n in before}


def test_ablation_refuses_bad_input_before_any_work(tmp_path, tiny_teachers, tiny_csv):
    job = _job(tmp_path, tiny_teachers, tiny_csv, strategy="avg")
    res = runner.invoke(app, ["ablate", "--config", str(job), "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "strategy is 'avg'" in res.output and "must be mtbert" in res.output
    job = _job(tmp_path, tiny_teachers, tiny_csv)
    res = runner.invoke(app, ["ablate", "--config", str(job), "--out", str(tmp_path / "b"), "--variants", "no_hid"])
    assert res.exit_code == 2 and "unknown variant(s) no_hid" in res.output and "no_hidden" in res.output
    res = runner.invoke(app, ["ablate", "--config", str(job), "--out", str(tmp_path / "c"), "--table-only"])
    assert res.exit_code == 2 and "run the ablation first" in res.output
    assert not any((tmp_path / n).exists() for n in "abc")
