"""Guards against distillation that hurts: the weak-teacher rule and the KD / no-KD choice on dev."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_run_args
from distill.cli import app
from distill.guards import choose_student, expand_weights, select_teachers

runner = CliRunner()


def _t(name, f1):
    return {"name": name, "dev": {"macro_f1": f1}}


def test_weak_teacher_rule():
    sel = select_teachers([_t("minilm", 92.1), _t("mpnet", 97.0), _t("bert", 95.5)], 3.0)
    assert sel.active == [1, 2] and [d["name"] for d in sel.dropped] == ["minilm"]
    assert abs(sel.dropped[0]["gap"] - 4.9) < 1e-9
    assert "minilm was left out of distillation" in sel.notes[0] and "--weak-teacher-margin 3" in sel.notes[0]
    assert select_teachers([_t("a", 10.0), _t("b", 90.0)], None).active == [0, 1]  # rule off
    assert select_teachers([_t("a", 10.0)], 0.0).active == [0]  # the best teacher always stays


def test_choose_student_on_dev():
    assert choose_student({"mtbert": [95.0, 94.9], "nokd": [95.9, 95.8]}, "mtbert", "dev")[0] == "nokd"
    assert choose_student({"mtbert": [96.0], "nokd": [95.9]}, "mtbert", "dev") == ("mtbert", None)
    assert choose_student({"mtbert": [90.0], "nokd": [95.9]}, "mtbert", "strategy") == ("mtbert", None)
    assert choose_student({"mtbert": [90.0]}, "mtbert", "dev") == ("mtbert", None)
    # a gap that rounds away at 2 decimals is shown with enough digits (the BBC default job: 97.3982 vs 97.4026)
    note = choose_student({"mtbert": [97.39818914], "nokd": [97.40263801]}, "mtbert", "dev")[1]
    assert "(97.3982 < 97.4026, a gap of 0.0044 points" in note, note


def test_choose_student_needs_a_dev_gain_beyond_seed_noise():
    # the MIND run: +0.11 mean paired gain, but the per-seed differences spread by 2 points -> no KD
    dev = {"mtbert": [49.07, 53.40, 51.29], "nokd": [49.28, 55.10, 49.05]}
    chosen, note = choose_student(dev, "mtbert", "dev")
    assert chosen == "nokd" and "(+0.11 points" in note and "standard error over 3 seeds (1.15): dev does not show" in note, note
    # a gain that is consistent across seeds is kept, even when small
    assert choose_student({"mtbert": [90.3, 90.6, 89.9], "nokd": [90.0, 90.4, 89.6]}, "mtbert", "dev") == ("mtbert", None)
    # a large mean gain carried by one seed is not enough ...
    assert choose_student({"mtbert": [95.0, 90.0, 90.0], "nokd": [90.0, 90.5, 90.5]}, "mtbert", "dev")[0] == "nokd"
    # ... nor is a tie; identical differences have no spread: any gain >= 0 keeps the main strategy
    assert choose_student({"mtbert": [90.0, 91.0], "nokd": [90.0, 91.0]}, "mtbert", "dev") == ("mtbert", None)
    # seeds pair by position: a run resumed with more nokd than mtbert seeds compares the common ones
    assert choose_student({"mtbert": [91.0], "nokd": [90.0, 99.0]}, "mtbert", "dev") == ("mtbert", None)


def test_expand_weights_keeps_every_teacher_column():
    w = np.array([[0.3, 0.7], [np.nan, np.nan]])
    full = expand_weights(w, [0, 2], 3)
    assert np.allclose(full[0], [0.3, 0.0, 0.7]) and np.isnan(full[1]).all()
    assert expand_weights(w, [0, 1], 2) is w


def test_run_drops_a_weak_teacher_and_keeps_the_better_student(tmp_path, tiny_teachers, tiny_csv):
    out = tmp_path / "run"
    # margin 0: every teacher below the best is left out; an MT-BERT student without task and KD loss
    # (hidden loss only) learns no labels, so the no-KD student wins on dev and becomes the run's student
    args = tiny_run_args(out, tiny_teachers, tiny_csv, baselines="nokd,aekd,camkd,ebkd,rl", weak_teacher_margin=0)
    args += ["--set", "mtbert.w_hid=1", "--set", "mtbert.w_task=0", "--set", "mtbert.w_kd=0", "--set", "rl.episode_steps=2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    f1 = [t["dev"]["macro_f1"] for t in r["teachers"]]
    sel = r["teacher_selection"]
    assert sel["active"] == [i for i, v in enumerate(f1) if v == max(f1)]
    for name in ("mtbert", "aekd", "camkd", "ebkd", "rl"):  # every rule runs on the remaining teacher(s)
        weights = r["strategies"][name]["teacher_weights"]["mean"]
        assert all(weights[d["index"]] == 0 for d in sel["dropped"]) and len(weights) == 2
    dev = {k: v["dev"]["macro_f1"]["mean"] for k, v in r["strategies"].items()}
    assert dev["nokd"] > dev["mtbert"]
    assert r["student"]["strategy"] == "nokd"
    assert json.loads((out / "student" / "classifier.json").read_text())["strategy"] == "nokd"
    md = (out / "report.md").read_text()
    assert "**Decision:** the mtbert student scored below the no-KD student on dev" in md
    assert "student: nokd (the run's student)" in md
    assert all(f"**Decision:** teacher {d['name']} was left out" in md for d in sel["dropped"])


def _cofinetune(tmp_path, teachers, data, **extra) -> tuple[dict, dict]:
    """A tiny run with early-stopping options; returns (teachers.json record, report.json)."""
    out = tmp_path / "run"
    res = runner.invoke(app, tiny_run_args(out, teachers, data, baselines="", student_epochs=1,
                                           teacher_store=tmp_path / "store", **extra))
    assert res.exit_code == 0, res.output
    rec = json.loads(next((tmp_path / "store").glob("*/teachers.json")).read_text())
    return rec, json.loads((out / "report.json").read_text())


def test_teacher_early_stopping_keeps_the_best_dev_epoch(tmp_path, tiny_teachers, tiny_csv):
    rec, r = _cofinetune(tmp_path, tiny_teachers, tiny_csv, teacher_epochs=5, teacher_patience=1)
    scores = [e["extra"]["dev_mean_macro_f1"] for e in rec["epochs"]]
    assert rec["best_epoch"] == 1 + int(np.argmax(scores))
    assert len(scores) == 5 or (rec["stopped"].startswith("no dev improvement") and scores[-1] <= max(scores))
    # the teachers written to the run are those of the best dev epoch
    assert np.mean([t["dev"]["macro_f1"] for t in r["teachers"]]) == pytest.approx(max(scores), abs=1e-6)


def test_teacher_time_budget_stops_after_an_epoch(tmp_path, tiny_teachers, tiny_csv):
    rec, _ = _cofinetune(tmp_path, tiny_teachers, tiny_csv, teacher_epochs=3, teacher_time_budget=0.001)
    assert len(rec["epochs"]) == 1 and rec["stopped"] == "time budget 0.001 s reached" and rec["best_epoch"] == 1


def test_student_early_stopping_keeps_each_students_best_dev_epoch(tmp_path, tiny_teachers, tiny_csv):
    out = tmp_path / "run"
    res = runner.invoke(app, tiny_run_args(out, tiny_teachers, tiny_csv, baselines="nokd", student_epochs=5,
                                           student_patience=1, student_lr=3e-3))
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    for strat in ("mtbert", "nokd"):
        run = r["runs"][strat][0]
        scores = [e["extra"]["dev_macro_f1"] for e in run["epochs"]]
        assert run["best_epoch"] == 1 + int(np.argmax(scores))
        assert len(scores) == 5 or (run["epochs"][-1]["extra"]["stopped"] == "no dev improvement for 1 epoch(s)"
                                    and scores[-1] <= max(scores))
        # the student evaluated (and saved) is the one of its best dev epoch, not its last
        assert run["dev"]["macro_f1"] == pytest.approx(max(scores), abs=1e-6)
    assert json.loads((out / "config.json").read_text())["student_patience"] == 1
    best = "; ".join(f"{s} [{r['runs'][s][0]['best_epoch']}]" for s in ("mtbert", "nokd"))
    assert f"early stopping on dev macro-F1 (patience 1, at most 5 epochs); each keeps its best dev epoch's weights. " \
           f"Best epoch per seed: {best}." in (out / "report.md").read_text()


def test_best_epoch_stops_after_patience_and_restores_the_best_weights():
    import torch
    from torch import nn

    from distill.early_stopping import BestEpoch

    model = nn.Linear(2, 1)
    stopper, weights = BestEpoch(patience=2), []
    for epoch, score in enumerate([50.0, 60.0, 59.0, 60.0], 1):
        nn.init.normal_(model.weight)
        weights.append(model.weight.detach().clone())
        stop = stopper.update(score, epoch, model)
        assert (stop is None) == (epoch < 4)
    assert stop == "no dev improvement for 2 epoch(s)" and stopper.best_epoch == 2  # a tie is no improvement
    assert stopper.restore(model) == 2 and torch.equal(model.weight, weights[1])
    again = BestEpoch(patience=2)
    again.load(stopper.state())
    assert again.best_f1 == 60.0 and again.bad == 2 and torch.equal(again.best_state["weight"], weights[1])
    budget = BestEpoch(budget_s=10)
    assert budget.update(1.0, 1, model, elapsed_s=5) is None
    assert budget.update(0.5, 2, model, elapsed_s=12) == "time budget 10 s reached"
    assert BestEpoch().restore(model) is None


class _Regression(__import__("torch").nn.Module):
    """A minimal method for ``fit``: squared error of a linear model on (row, row) -> label."""

    def configure_optimizers(self, model, fs, total_steps):
        from distill.trainer import adamw

        return [adamw([(list(model.parameters()), fs.lr)], fs.weight_decay, total_steps, fs.warmup)]

    def step_loss(self, batch, ctx):
        import torch

        x = torch.tensor(batch.rows, dtype=torch.float32)[:, None].repeat(1, 2)
        return {"loss": ((ctx.model(x).squeeze(-1) - batch.labels.float()) ** 2).mean()}

    def on_epoch_start(self, ctx):
        pass

    def on_epoch_end(self, ctx):
        return None


def test_fit_resumed_after_a_kill_keeps_the_best_epoch_of_the_whole_run():
    """The early-stopping state travels in fit's checkpoint: a run killed after epoch 3 and resumed
    restores epoch 2's weights (the best dev score of all 5), as the uninterrupted run does."""
    import torch
    from torch import nn

    from distill.early_stopping import BestEpoch
    from distill.trainer import FitSettings, fit

    scores = [10.0, 30.0, 20.0, 25.0, 5.0]
    fs = FitSettings(epochs=5, batch_size=4, lr=0.05, head_lr=0.05, seed=1)
    labels, rows = [0, 1] * 8, list(range(16))

    def run(stopper, resume_state=None, kill_after=None):
        torch.manual_seed(0)
        model, states = nn.Linear(2, 1), []

        def checkpoint(st):
            states.append(st)
            if len(st["logs"]) == kill_after:
                raise KeyboardInterrupt  # the kill, right after the checkpoint was written

        try:
            fit(_Regression(), model, labels, rows, fs, checkpoint=checkpoint, resume_state=resume_state,
                early_stopping=stopper)
        except KeyboardInterrupt:
            pass
        return model, states

    def scorer(start):
        it = iter(scores[start:])
        return BestEpoch(patience=3, score=lambda: next(it))

    full, full_states = run(scorer(0))
    assert torch.equal(full.weight, full_states[1]["model"]["weight"])  # epoch 2's weights, not epoch 5's
    _, killed = run(scorer(0), kill_after=3)
    resumed_stopper = scorer(3)
    resumed, _ = run(resumed_stopper, resume_state=killed[-1])
    assert resumed_stopper.best_epoch == 2 and torch.equal(resumed.weight, full.weight)
