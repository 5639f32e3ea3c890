"""The weighting/selection strategies end to end on tiny models: runs, settings from the CLI, the
teacher-weight report, a strategy added from outside the package, and exact resume of the RL policy."""

import json

import pytest
from pydantic import Field
from typer.testing import CliRunner

from conftest import tiny_run_args
from distill.cli import app

runner = CliRunner()


def _report(path):
    return json.loads((path / "report.json").read_text())


def test_weighting_strategies_run_and_report_teacher_weights(tmp_path, tiny_teachers, tiny_csv, tiny_run):
    store = tiny_run.parent / ".teacher-store"
    out = tmp_path / "w"
    res = runner.invoke(app, tiny_run_args(out, tiny_teachers, tiny_csv, strategy="camkd", baselines="ebkd,aekd,rl",
                                           teacher_store=store) + ["--set", "rl.episode_steps=3"])
    assert res.exit_code == 0, res.output
    r = _report(out)
    assert set(r["strategies"]) == {"camkd", "ebkd", "aekd", "rl"}
    for name, s in r["strategies"].items():
        w = s["teacher_weights"]
        assert len(w["mean"]) == 2 and len(w["dominant_share"]) == 2, name
        assert sum(w["dominant_share"]) == pytest.approx(1.0), name
        assert set(w["per_class"]) == {"business", "politics", "sport", "tech"}, name
        if name != "rl":  # rl: texts with no teacher selected get no KD weight
            assert sum(w["mean"]) == pytest.approx(1.0, abs=1e-5), name
        assert s["paper"] and s["settings"]
    assert 0.4 - 1e-6 <= min(r["strategies"]["aekd"]["teacher_weights"]["mean"]) <= 0.6 + 1e-6
    comps = r["strategies"]["camkd"]["final_epoch_components"]
    assert {"kd", "task", "hint"} <= set(comps)
    rl_epoch = r["runs"]["rl"][0]["epochs"][-1]["extra"]
    assert rl_epoch["episodes"] >= 3 and "select_prob_teacher_0" in rl_epoch
    assert r["strategies"]["rl"]["settings"]["episode_steps"] == 3
    md = (out / "report.md").read_text()
    assert "Which teacher taught what" in md and "dominant on" in md and "final-epoch loss components" in md


@pytest.mark.parametrize("sets, message", [
    (["camkd.beta=-1"], "--set camkd.beta=-1"),
    (["camkd.nope=1"], "camkd has no setting 'nope'"),
    (["magic.x=1"], "unknown strategy 'magic'"),
    (["beta=1"], "no strategy of this run"),
    (["camkd.feature_loss=cnn"], "--set camkd.feature_loss='cnn'"),
    (["oops"], "expected STRATEGY.FIELD=VALUE"),
    (["aekd.C=0.3"], "--set aekd.C=0.3: with 2 teachers"),
    (["hinton.teacher=5"], "--set hinton.teacher=5: out of range"),
])
def test_bad_settings_fail_before_training(tmp_path, tiny_teachers, tiny_csv, sets, message):
    strategy = "mtbert" if sets == ["beta=1"] else sets[0].split(".")[0] if sets[0].split(".")[0] in (
        "aekd", "hinton") else "camkd"
    args = tiny_run_args(tmp_path / "r", tiny_teachers, tiny_csv, strategy=strategy)
    for s in sets:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert not (tmp_path / "r" / "teachers").exists()


def test_bare_setting_applies_to_every_strategy_that_has_it():
    from distill.config import parse_set_options

    assert parse_set_options(["alpha=0.7", "mtbert.w_hid=0.1"], ["mtbert", "avg", "camkd"]) == {
        "avg": {"alpha": 0.7}, "camkd": {"alpha": 0.7}, "mtbert": {"w_hid": 0.1}}


def test_old_config_fields_migrate_into_settings():
    from distill.config import RunConfig

    cfg = RunConfig.from_dict({"w_hid": 0.1, "alpha": 0.7, "kd_teacher": 1, "out": "x"})
    assert cfg.settings == {"mtbert": {"w_hid": 0.1}, "hinton": {"alpha": 0.7, "teacher": 1}, "avg": {"alpha": 0.7}}
    assert cfg.strategy_settings("mtbert").w_hid == 0.1


def test_strategies_command_lists_methods_settings_and_papers():
    res = runner.invoke(app, ["strategies"])
    assert res.exit_code == 0, res.output
    for name in ("mtbert", "camkd", "ebkd", "aekd", "rl", "avg", "hinton", "nokd", "metadistil"):
        assert f"\n{name}\n" in "\n" + res.output
    assert "camkd.beta          default 1.0" in res.output and "one of hint | logit | none" in res.output and "eq. (5)" in res.output and "NeurIPS 2020" in res.output
    data = json.loads(runner.invoke(app, ["strategies", "--json"]).output)
    assert {r["name"] for r in data["aekd"]["settings"]} == {"alpha", "temperature", "C", "gradient", "normalize"}


def test_a_new_strategy_needs_no_edit_of_existing_files(tmp_path, tiny_teachers, tiny_csv, tiny_run):
    """A strategy defined outside the package (as a new module would be) with its own setting is
    reachable from `--set` and reported, without touching cli.py, config.py or the trainer."""
    from distill import losses
    from distill.strategies import STRATEGIES, DistillStrategy, StrategySettings, register

    class ScaledSettings(StrategySettings):
        gamma: float = Field(1.0, gt=0, description="scale of the task loss")

    @register("scaled_ce_test")
    class ScaledCE(DistillStrategy):
        """Test-only: gamma * CE(y, y_s)."""

        Settings = ScaledSettings

        def loss(self, student, teachers, batch):
            ce = losses.task_loss(student.logits, batch.labels)
            return {"loss": self.settings.gamma * ce, "ce": ce.detach()}

    try:
        out = tmp_path / "p"
        res = runner.invoke(app, tiny_run_args(out, tiny_teachers, tiny_csv, strategy="scaled_ce_test", baselines="",
                                               teacher_store=tiny_run.parent / ".teacher-store")
                            + ["--set", "scaled_ce_test.gamma=0.5"])
        assert res.exit_code == 0, res.output
        s = _report(out)["strategies"]["scaled_ce_test"]
        assert s["settings"] == {"gamma": 0.5} and "ce" in s["final_epoch_components"]
    finally:
        STRATEGIES.pop("scaled_ce_test", None)


class Killed(RuntimeError):
    pass


def test_rl_resume_after_kill_equals_uninterrupted_run(tmp_path, tiny_teachers, tiny_csv, tiny_run, monkeypatch):
    """The policy, its optimiser, the episode buffer, the baseline and the RNG are checkpointed: a run
    killed after epoch 1 and resumed gives exactly the uninterrupted run's metrics."""
    import distill.students as pl  # the student phase checkpoints through it

    store = tiny_run.parent / ".teacher-store"
    extra = ["--set", "rl.episode_steps=4"]
    ref = tmp_path / "ref"
    res = runner.invoke(app, tiny_run_args(ref, tiny_teachers, tiny_csv, strategy="rl", baselines="",
                                           teacher_store=store) + extra)
    assert res.exit_code == 0, res.output

    real = pl.save_checkpoint

    def killing_checkpoint(path, state):
        real(path, state)
        raise Killed("simulated kill after the first student epoch")

    monkeypatch.setattr(pl, "save_checkpoint", killing_checkpoint)
    out = tmp_path / "killed"
    args = tiny_run_args(out, tiny_teachers, tiny_csv, strategy="rl", baselines="", teacher_store=store) + extra
    with pytest.raises(Killed):
        runner.invoke(app, args, catch_exceptions=False)
    monkeypatch.setattr(pl, "save_checkpoint", real)
    res = runner.invoke(app, args + ["--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming student/rl/seed13 after epoch 1" in (out / "log.txt").read_text()
    a, b = _report(ref)["runs"]["rl"][0], _report(out)["runs"]["rl"][0]
    assert a["test"] == b["test"] and a["dev"] == b["dev"]
    assert [e["loss"] for e in a["epochs"]] == [e["loss"] for e in b["epochs"]]
    assert a["teacher_weights"] == b["teacher_weights"]


def test_config_json_of_an_older_version_keeps_its_strategy_defaults(tmp_path):
    """A run folder written before 0.3 (no ``config_version``) resumes with MT-BERT's old default w_hid = 1;
    a current one, or a YAML job file, gets today's default (0); a newer version is refused."""
    from distill.config import CONFIG_VERSION, RunConfig, load_job_file
    from distill.errors import DistillError

    old = {k: v for k, v in RunConfig(out=str(tmp_path / "r")).to_dict().items() if k != "config_version"}
    cfg = RunConfig.from_dict(old)
    assert cfg.strategy_settings("mtbert").w_hid == 1.0 and cfg.config_version == CONFIG_VERSION
    assert RunConfig.from_dict(cfg.to_dict()).strategy_settings("mtbert").w_hid == 1.0  # stays pinned when rewritten
    assert RunConfig.from_dict(RunConfig().to_dict()).strategy_settings("mtbert").w_hid == 0.0
    given = dict(old, settings={"mtbert": {"w_hid": 0.1}})
    assert RunConfig.from_dict(given).strategy_settings("mtbert").w_hid == 0.1  # a setting the user gave wins
    # a run's config.json given as a job file is migrated the same way; a hand-written YAML job is not
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert load_job_file(tmp_path / "config.json")["settings"] == {"mtbert": {"w_hid": 1.0}}
    (tmp_path / "job.yaml").write_text("strategy: mtbert\nrepeats: 2\n")
    assert "settings" not in load_job_file(tmp_path / "job.yaml")
    with pytest.raises(DistillError, match="config_version 99 is newer"):
        RunConfig.from_dict(dict(old, config_version=99))


def test_mtbert_paper_preset_fills_the_fields_not_given():
    from distill.errors import DistillError
    from distill.strategies import resolve_settings

    assert resolve_settings("mtbert", None).w_hid == 0.0
    paper = resolve_settings("mtbert", {"preset": "paper"})
    assert (paper.w_hid, paper.w_kd, paper.w_task, paper.temperature, paper.loss_weighting) == (1.0, 1.0, 1.0, 1.0, True)
    mixed = resolve_settings("mtbert", {"preset": "paper", "w_hid": 0.1, "temperature": 2})
    assert (mixed.w_hid, mixed.temperature, mixed.w_kd) == (0.1, 2.0, 1.0)
    with pytest.raises(DistillError, match="mtbert.preset='papr'"):
        resolve_settings("mtbert", {"preset": "papr"})
