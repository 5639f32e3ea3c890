"""The whole `distill run` on tiny models: run folder, report, resume, teacher reuse and error messages."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from distill.cli import app
from conftest import tiny_run_args

runner = CliRunner()


def test_run_folder_contents(tiny_run):
    for f in ("config.json", "split.json", "labels.json", "report.json", "report.md", "state.json", "log.txt",
              "student/model.safetensors", "student/head.safetensors", "student/classifier.json",
              "student/tokenizer.json", "teachers/teacher_0/model.safetensors", "teachers/teacher_1/head.safetensors"):
        assert (tiny_run / f).is_file(), f
    assert not list(tiny_run.rglob("*.tmp")) and not list(tiny_run.rglob(".*.tmp-*"))
    split = json.loads((tiny_run / "split.json").read_text())
    assert split["sizes"] == {"train": 84, "dev": 12, "test": 24}
    assert len(split["ids"]["test"]) == 24 and split["seed"] == 13
    r = json.loads((tiny_run / "report.json").read_text())
    assert [t["token_level_hidden_loss"] for t in r["teachers"]] == [True, False]  # MPNet tokenizer differs
    assert r["teachers"][0]["layer_map"] == [2, 4] and r["teachers"][1]["layer_map"] == [1, 2]
    for key in ("accuracy", "macro_f1"):
        assert 0 <= r["ensemble"]["test"][key] <= 100
        assert key in r["strategies"]["mtbert"]["test"] and key in r["strategies"]["nokd"]["test"]
    assert r["compression"]["ensemble_over_student"] > 1
    assert r["student"]["params"] < r["ensemble"]["params"]
    assert r["student"]["file_mb"] > 0 and all(t["file_mb"] > 0 for t in r["teachers"])
    assert r["times_s"]["teachers_finetune"] > 0 and r["strategies"]["mtbert"]["epoch_seconds"]["mean"] > 0
    assert r["cache"]["mode"] == "cache"
    md = (tiny_run / "report.md").read_text()
    for needle in ("macro-F1", "Compression", "Ensemble / student parameters", "times smaller", "Wall time",
                   "epoch", "MB", "teacher ensemble", "student: nokd"):
        assert needle in md, needle


def test_student_loads_with_transformers_and_predicts(tiny_run):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from distill.modeling import load_classifier

    enc = AutoModel.from_pretrained(str(tiny_run / "student"))
    assert enc.config.num_hidden_layers == 2  # half of the 4-layer BERT teacher
    model, tok, meta = load_classifier(tiny_run / "student")
    assert meta["label_names"] == ["business", "politics", "sport", "tech"]
    batch = AutoTokenizer.from_pretrained(str(tiny_run / "student"))(["market shares profit"], return_tensors="pt")
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
    assert logits.shape == (1, 4)


def test_repeats_and_teacher_reuse(tmp_path, tiny_teachers, tiny_csv, tiny_run):
    # same teachers/data/split/settings as tiny_run -> the finetuned teachers are reused from the store
    store = tiny_run.parent / ".teacher-store"
    res = runner.invoke(app, tiny_run_args(tmp_path / "r2", tiny_teachers, tiny_csv, repeats=2, baselines="hinton,avg",
                                           teacher_store=store))
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert r["teacher_training"]["reused"] is True and r["cache"]["reused"] is True
    s = r["strategies"]["mtbert"]["test"]["macro_f1"]
    assert len(s["values"]) == 2 and s["std"] >= 0
    assert set(r["strategies"]) == {"mtbert", "hinton", "avg"}
    assert "±" in (tmp_path / "r2" / "report.md").read_text()


def test_resume_with_more_or_fewer_seeds(tmp_path, tiny_teachers, tiny_csv, tiny_run):
    store = tiny_run.parent / ".teacher-store"
    out = tmp_path / "seeds"
    args = tiny_run_args(out, tiny_teachers, tiny_csv, baselines="", teacher_store=store)
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "students" / "mtbert-seed13" / "metrics.json").read_text()
    res = runner.invoke(app, args + ["--resume", "--repeats", "2"])  # adds seed 14, keeps seed 13
    assert res.exit_code == 0, res.output
    assert (out / "students" / "mtbert-seed13" / "metrics.json").read_text() == first
    r = json.loads((out / "report.json").read_text())
    assert [run["seed"] for run in r["runs"]["mtbert"]] == [13, 14]
    assert json.loads((out / "config.json").read_text())["repeats"] == 2
    res = runner.invoke(app, args + ["--resume"])  # no --repeats: the saved 2 stand (the option's default is 1)
    assert res.exit_code == 0 and len(json.loads((out / "report.json").read_text())["runs"]["mtbert"]) == 2
    res = runner.invoke(app, args + ["--resume", "--repeats", "1"])  # report the first seed only
    assert res.exit_code == 0 and [x["seed"] for x in json.loads((out / "report.json").read_text())["runs"]["mtbert"]] == [13]
    res = runner.invoke(app, args + ["--resume", "--baselines", "nokd"])  # a baseline added to a finished run
    assert res.exit_code == 0, res.output
    assert (out / "students" / "mtbert-seed13" / "metrics.json").read_text() == first
    r = json.loads((out / "report.json").read_text())
    assert set(r["runs"]) == {"mtbert", "nokd"} and json.loads((out / "config.json").read_text())["baselines"] == ["nokd"]
    # `distill reference` adds a section to report.json; a later --resume rewrites the report and keeps it
    r = json.loads((out / "report.json").read_text())
    (out / "report.json").write_text(json.dumps(dict(r, reference={"models": [{"name": "tfidf-lr"}]})))
    assert runner.invoke(app, args + ["--resume"]).exit_code == 0
    assert json.loads((out / "report.json").read_text())["reference"] == {"models": [{"name": "tfidf-lr"}]}


class Killed(RuntimeError):
    pass


def test_resume_after_kill(tmp_path, tiny_teachers, tiny_csv, monkeypatch):
    import distill.students as pl  # the student phase checkpoints through it

    real = pl.save_checkpoint
    calls = {"n": 0}

    def killing_checkpoint(path, state):
        real(path, state)
        if "students" in str(path) or "checkpoints" in str(path):
            calls["n"] += 1
            raise Killed("simulated kill after the first student epoch")

    monkeypatch.setattr(pl, "save_checkpoint", killing_checkpoint)
    out = tmp_path / "run"
    args = tiny_run_args(out, tiny_teachers, tiny_csv, teacher_store=tmp_path / "store")
    with pytest.raises(Killed):
        runner.invoke(app, args, catch_exceptions=False)
    assert calls["n"] == 1
    assert (out / "checkpoints" / "mtbert-seed13.ckpt").is_file()
    assert not (out / "report.json").exists() and not (out / "student").exists()
    monkeypatch.setattr(pl, "save_checkpoint", real)
    res = runner.invoke(app, args)  # no --resume: refuses to clobber
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, args + ["--resume"])
    assert res.exit_code == 0, res.output
    log = (out / "log.txt").read_text()
    assert "resuming student/mtbert/seed13 after epoch 1" in log and "reusing finetuned teachers" in log
    r = json.loads((out / "report.json").read_text())
    assert len(r["runs"]["mtbert"][0]["epochs"]) == 2
    assert not (out / "checkpoints" / "mtbert-seed13.ckpt").exists()


def test_a_checkpoint_of_other_parameters_restarts_the_phase(tmp_path, tiny_teachers, tiny_csv, monkeypatch):
    """A mid-student checkpoint whose strategy state has other parameters (e.g. mtbert's W_ij, written by 0.2
    with w_hid = 0) is not half-loaded: the student phase starts again and the run completes."""
    import torch

    import distill.students as pl

    real = pl.save_checkpoint

    def killing_checkpoint(path, state):
        real(path, state)
        if "checkpoints" in str(path):
            raise Killed("simulated kill after the first student epoch")

    monkeypatch.setattr(pl, "save_checkpoint", killing_checkpoint)
    out = tmp_path / "run"
    args = tiny_run_args(out, tiny_teachers, tiny_csv, baselines="", teacher_store=tmp_path / "store")
    with pytest.raises(Killed):
        runner.invoke(app, args, catch_exceptions=False)
    monkeypatch.setattr(pl, "save_checkpoint", real)
    ckpt = out / "checkpoints" / "mtbert-seed13.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["method"]["projections.0.0.weight"] = torch.zeros(2, 2)  # a parameter this strategy does not have
    real(ckpt, state)
    res = runner.invoke(app, args + ["--resume"])
    assert res.exit_code == 0, res.output
    assert "ignoring a checkpoint whose parameters differ" in (out / "log.txt").read_text()
    assert len(json.loads((out / "report.json").read_text())["runs"]["mtbert"][0]["epochs"]) == 2


def test_online_teachers_when_cache_too_large(tmp_path, tiny_teachers, tiny_csv):
    res = runner.invoke(app, tiny_run_args(tmp_path / "r", tiny_teachers, tiny_csv, cache_max_mb=0.001,
                                           teacher_store=tmp_path / "store"))
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "r" / "report.json").read_text())
    assert r["cache"]["mode"] == "online" and r["strategies"]["mtbert"]["teacher_signal"] == "online"


def test_cached_and_online_teacher_signals_match(tiny_run):
    """The cache returns what the teachers would compute at the step (fp16 token states, fp32 logits)."""
    import torch

    from distill.config import RunConfig
    from distill.modeling import load_classifier
    from distill.pipeline import prepare
    from distill.cache import TeacherProvider, teacher_outputs
    from distill.tokens import Tokenized

    cfg = RunConfig.from_dict(json.loads((tiny_run / "config.json").read_text()))
    P = prepare(cfg)
    teachers = [load_classifier(tiny_run / "teachers" / f"teacher_{i}")[0] for i in range(2)]
    toks = [Tokenized(t, P.ds.texts, cfg.max_length) for t in P.teacher_toks]
    rows = P.split.train
    cached = [teacher_outputs(t, tk, rows, lm, tl, "cpu", 16, "fp32", "x")
              for t, tk, lm, tl in zip(teachers, toks, P.layer_maps, P.token_level)]
    a = TeacherProvider(rows, cached=cached, token_level=P.token_level, needs_layers=True)
    b = TeacherProvider(rows, teachers=teachers, toks=toks, layer_maps=P.layer_maps, token_level=P.token_level,
                        needs_layers=True)
    batch = rows[:5]
    L = max(len(toks[0].ids[r]) for r in batch)
    sa, sb = a(batch, L), b(batch, L)
    assert torch.allclose(sa.logits, sb.logits, atol=1e-5)
    m = torch.tensor([[1.0 if k < len(toks[0].ids[r]) else 0.0 for k in range(L)] for r in batch]).unsqueeze(-1)
    assert torch.allclose(sa.layers[0][0] * m, sb.layers[0][0] * m, atol=1e-2)
    assert torch.allclose(sa.layers[1][1], sb.layers[1][1], atol=1e-5)
    assert sa.pooled.shape == (2, 5, teachers[0].head.classifier.in_features)
    assert torch.allclose(sa.pooled, sb.pooled, atol=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--teacher", "no-such-org/no-such-model"], "teacher 'no-such-org/no-such-model' was not found"),
    (["--student-layers", "9"], "deeper than the teacher it is cut from"),
    (["--text-col", "headline"], "unknown column 'headline'"),
    (["--strategy", "magic"], "unknown strategy 'magic'"),
])
def test_clear_errors_before_long_work(tmp_path, tiny_teachers, tiny_csv, extra, message):
    args = tiny_run_args(tmp_path / "r", tiny_teachers, tiny_csv) + extra
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert message in " ".join(res.output.split()), res.output
    assert not (tmp_path / "r" / "teachers").exists()


def test_unwritable_output_folder(tmp_path, tiny_teachers, tiny_csv):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(app, tiny_run_args(blocker / "run", tiny_teachers, tiny_csv))
    assert res.exit_code == 2 and "not writable" in res.output


def test_rare_label_error(tmp_path, tiny_teachers):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"market profit {i},biz\n" for i in range(10)) + "goal team,sport\n")
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), "--data", str(p), "--teacher", str(tiny_teachers[0])])
    assert res.exit_code == 2 and "'sport' (1 rows)" in " ".join(res.output.split())


def test_help_explains_options():
    res = runner.invoke(app, ["run", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for flag in ("--teacher", "--data", "--text-col", "--strategy", "--baselines", "--repeats", "--resume",
                 "--device", "--set", "--train-cap", "--max-length", "--student-layers"):
        assert flag in text, flag


def test_resuming_a_run_of_an_older_version_does_not_report_its_pinned_defaults_as_changed(
        tmp_path, tiny_teachers, tiny_csv, tiny_run):
    """A run folder written before 0.3 (no ``config_version``) resumes with the old mtbert default pinned
    (w_hid = 1); the same command line must not be reported as changing ``settings``, while a real change is."""
    import logging
    import shutil

    from distill.config import RunConfig
    from distill.pipeline import log, open_run_folder

    out = tmp_path / "old"
    shutil.copytree(tiny_run, out)
    saved = json.loads((out / "config.json").read_text())
    saved.pop("config_version")
    saved["out"] = str(out)
    (out / "config.json").write_text(json.dumps(saved))
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    log.addHandler(handler)
    try:
        same = RunConfig.from_dict(saved, pin_old_defaults=False)  # what the same command line builds today
        assert "mtbert" not in same.settings
        cfg, _ = open_run_folder(same, resume=True, overwrite=False, resume_changes=set())
        assert cfg.strategy_settings("mtbert").w_hid == 1.0
        assert not [m for m in messages if "ignoring changed options" in m], messages
        changed = RunConfig.from_dict(dict(saved, settings={"mtbert": {"temperature": 2.0}}), pin_old_defaults=False)
        cfg, _ = open_run_folder(changed, resume=True, overwrite=False, resume_changes=set())
        assert cfg.strategy_settings("mtbert").temperature == 1.0  # the saved config wins, and says so
        assert [m for m in messages if "ignoring changed options ['settings']" in m], messages
    finally:
        log.removeHandler(handler)
    # end to end: the resumed run keeps w_hid = 1 and writes the current config_version
    args = tiny_run_args(out, tiny_teachers, tiny_csv, baselines="nokd", teacher_store=tiny_run.parent / ".teacher-store")
    res = runner.invoke(app, args + ["--resume"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["mtbert"]["w_hid"] == 1.0 and cfg["config_version"] == 2


def test_student_init_teacher_starts_from_the_cofinetuned_layers(tmp_path, tiny_teachers, tiny_csv, tiny_run):
    """--student-init teacher: the student's embeddings and first K layers are the co-finetuned teacher's
    (a student lr of 1e-12 keeps them where they started); --student-init pretrained: they are not."""
    from safetensors.torch import load_file

    store = tiny_run.parent / ".teacher-store"
    loaded = {}
    for init in ("teacher", "pretrained"):
        out = tmp_path / init
        res = runner.invoke(app, tiny_run_args(out, tiny_teachers, tiny_csv, baselines="", teacher_store=store,
                                               student_init=init, student_epochs=1, student_lr=1e-12))
        assert res.exit_code == 0, res.output
        r = json.loads((out / "report.json").read_text())
        assert r["teacher_training"]["reused"] is True
        assert json.loads((out / "config.json").read_text())["student_init"] == init
        loaded[init] = load_file(str(out / "students" / "mtbert-seed13" / "model" / "model.safetensors"))
    teacher = load_file(str(Path(r["teacher_store"]) / "teacher_0" / "model.safetensors"))  # the same store for both
    pre = load_file(str(tiny_teachers[0] / "model.safetensors"))
    keys = [k for k in loaded["teacher"] if k.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))]
    assert keys and not any(k.startswith("encoder.layer.2.") for k in loaded["teacher"])  # K = 2 of 4 layers
    for k in keys:
        assert torch.allclose(loaded["teacher"][k], teacher[k], atol=1e-6), k
    moved = [k for k in keys if not torch.allclose(teacher[k], pre[k], atol=1e-4)]
    assert moved, "co-finetuning changed none of the student's layers: the test cannot tell the two starts apart"
    for k in moved:
        assert torch.allclose(loaded["pretrained"][k], pre[k], atol=1e-6) and not torch.allclose(
            loaded["pretrained"][k], teacher[k], atol=1e-4), k


def test_student_init_teacher_refuses_a_student_not_cut_from_a_teacher(tmp_path, tiny_teachers, tiny_csv):
    res = runner.invoke(app, tiny_run_args(tmp_path / "x", tiny_teachers, tiny_csv, student="textcnn",
                                           student_init="teacher"))
    assert res.exit_code != 0
    assert "--student-init teacher: needs the default student" in res.output and "--student textcnn" in res.output
