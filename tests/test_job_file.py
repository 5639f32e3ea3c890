"""`distill run --config job.yaml`: every option has a key, flags override the file, bad keys fail first."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distill.cli import app
from distill.config import RunConfig, load_job_file
from distill.errors import DistillError

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _job(tmp_path, teachers, data, **extra) -> Path:
    job = {"data": str(data), "text_cols": ["title", "body"], "max_length": 32, "teachers": [str(t) for t in teachers],
           "teacher_epochs": 2, "teacher_train_layers": 0, "teacher_lr": 1e-3, "teacher_batch_size": 8,
           "student_epochs": 1, "student_lr": 1e-3, "student_batch_size": 8, "threads": 1, "baselines": "nokd",
           "settings": {"mtbert": {"w_hid": 0.5}}, **extra}
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(job))
    return p


def test_job_file_flags_override_and_resolved_config_is_saved(tmp_path, tiny_teachers, tiny_csv):
    job = _job(tmp_path, tiny_teachers, tiny_csv, out=str(tmp_path / "from-file"))
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--config", str(job), "--out", str(out), "--student-epochs", "2",
                              "--set", "mtbert.temperature=2"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["student_epochs"] == 2  # the flag wins
    assert saved["max_length"] == 32 and saved["baselines"] == ["nokd"] and saved["text_cols"] == ["title", "body"]
    assert saved["settings"]["mtbert"] == {"w_hid": 0.5, "temperature": 2}  # --set merged into the file's settings
    assert not (tmp_path / "from-file").exists()
    # a run's own config.json is a job file that reproduces it
    assert RunConfig(**{k: v for k, v in load_job_file(out / "config.json").items()}).to_dict() == saved


@pytest.mark.parametrize("content, message", [
    ("studnet_epochs: 3\n", "unknown key 'studnet_epochs'. Did you mean 'student_epochs'?"),
    ("student_epochs: three\n", "key 'student_epochs': Input should be a valid integer"),
    ("teachers: 5\n", "key 'teachers'"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_job_files_fail_before_any_work(tmp_path, content, message):
    job = tmp_path / "job.yaml"
    job.write_text(content)
    res = runner.invoke(app, ["run", "--config", str(job), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and message in res.output and str(job) in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_missing_job_file():
    with pytest.raises(DistillError, match="file not found"):
        load_job_file("no/such/job.yaml")


def test_every_run_option_has_a_key():
    from distill.cli import PARAM_KEYS
    from distill.config import JOB_OPTIONS

    import typer.main

    cmd = typer.main.get_command(app).commands["run"]
    keys = set(RunConfig.__dataclass_fields__) | set(JOB_OPTIONS)
    for p in cmd.params:
        if p.name != "config":
            assert PARAM_KEYS.get(p.name, p.name) in keys, p.name


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_job_files_are_valid(example):
    vals = load_job_file(example)
    cfg = RunConfig(**{k: v for k, v in vals.items() if k in RunConfig.__dataclass_fields__})
    cfg.validate()


@pytest.mark.parametrize("value, expected", [("a.csv", ["a.csv"]), (["a.csv", "b.txt"], ["a.csv", "b.txt"]),
                                             (None, [])])
def test_unlabeled_takes_one_path_or_a_list(tmp_path, value, expected):
    """One transfer-set file (the form of older job files and runs' config.json) or several."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"unlabeled": value}))
    assert load_job_file(job)["unlabeled"] == expected
    assert RunConfig.from_dict({"unlabeled": value}).unlabeled == expected
