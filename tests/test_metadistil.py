"""MetaDistil (paper 004, METHODS.md section 4) on tiny models: the teachers' meta-gradient against a
finite-difference estimate, the student's step against a plain distillation step from the updated
teachers, noise injection, and a tiny run end to end with a kill and --resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers import AutoTokenizer, BertConfig, BertModel
from typer.testing import CliRunner

from conftest import tiny_run_args
from distill.cli import app
from distill.modeling import ClassificationHead, EncoderClassifier
from distill.strategies import StudentSpec, TeacherSpec, build_strategy
from distill.strategies.metadistil import inject_noise, kd_objective
from distill.testing import make_texts
from distill.tokens import Tokenized
from distill.trainer import FitSettings, StepContext

runner = CliRunner()
C = 4


def _model(tok, hidden, layers, seed):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return EncoderClassifier(BertModel(cfg, add_pooling_layer=False),
                             ClassificationHead(hidden, C, 8, dropout=0.0, pooling="mean"), hidden).double()


@pytest.fixture(scope="module")
def setup(tiny_teachers):
    tok = AutoTokenizer.from_pretrained(str(tiny_teachers[0]))
    rows = make_texts(6, seed=3)
    texts = [t for _, t in rows]
    names = sorted({lab for lab, _ in rows})
    labels = [names.index(lab) for lab, _ in rows]
    tk = Tokenized(tok, texts, 24)
    teachers = [_model(tok, 16, 2, 1), _model(tok, 16, 1, 2)]
    student = _model(tok, 12, 1, 3)
    return tk, labels, teachers, student


def _strategy(setup, **settings):
    tk, labels, teachers, student = setup
    specs = [TeacherSpec(f"t{i}", 16, 2, [1], True, 16, None) for i in range(2)]
    s = build_strategy("metadistil", {"quiz_size": 6, "quiz_batch_size": 6, **settings}, specs, StudentSpec(12, 1, C))
    s.attach(teachers, [tk, tk], tk, list(range(18, 24)), labels)
    return s.double()


def _quiz_after_pilot(strategy, student, ids, mask, rows, y, quiz, lr):
    """d(quiz loss after the pilot step) computed plainly (no create_graph): the function whose
    derivative in a teacher parameter the meta-gradient must equal."""
    params = dict(student.named_parameters())
    t = torch.stack([m(*strategy.teacher_toks[0].batch(rows, "cpu")).logits for m in strategy.live]).mean(0)
    L, _, _ = kd_objective(functional_call(student, params, (ids, mask)).logits, t, y, 0.5, 2.0)
    g = torch.autograd.grad(L, list(params.values()))
    fast = {n: p - lr * gi for (n, p), gi in zip(params.items(), g)}
    q_ids, q_mask = strategy.student_tok.batch(quiz, "cpu")
    q_y = torch.tensor([strategy.quiz_labels[strategy.quiz_pos[r]] for r in quiz])
    return F.cross_entropy(functional_call(student, fast, (q_ids, q_mask)).logits, q_y).item()


def test_meta_gradient_equals_finite_difference_of_the_quiz_loss(setup):
    tk, labels, _, student = setup
    strategy = _strategy(setup)
    rows, quiz, lr = list(range(8)), list(range(18, 24)), 0.5
    ids, mask = tk.batch(rows, "cpu")
    y = torch.tensor([labels[r] for r in rows])
    lrs = {n: lr for n, _ in student.named_parameters()}
    meta = strategy.meta_gradient(student, ids, mask, rows, y, quiz, lrs)
    tparams = {n: p for n, p in strategy.live.named_parameters() if p.requires_grad}
    names = list(tparams)
    checked = 0
    # entries of the classifier, the top layer's output dense and the embeddings of both teachers
    for name, index in [("0.head.classifier.weight", (1, 2)), ("0.encoder.encoder.layer.1.output.dense.weight", (3, 5)),
                        ("1.head.classifier.bias", (0,)), ("1.encoder.embeddings.word_embeddings.weight", (7, 4)),
                        ("0.encoder.encoder.layer.0.attention.self.query.weight", (2, 9))]:
        p = tparams[name]
        analytic = meta["grads"][names.index(name)][index].item()
        h, base = 1e-6, p.data[index].item()
        with torch.no_grad():
            p.data[index] = base + h
        up = _quiz_after_pilot(strategy, student, ids, mask, rows, y, quiz, lr)
        with torch.no_grad():
            p.data[index] = base - h
        down = _quiz_after_pilot(strategy, student, ids, mask, rows, y, quiz, lr)
        with torch.no_grad():
            p.data[index] = base
        numeric = (up - down) / (2 * h)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9), name
        checked += abs(numeric) > 1e-8
    assert checked >= 4  # the entries carry a real gradient, not zeros on both sides
    # the Hessian-free variant approximates the same gradient
    fd = _strategy(setup, meta_grad="finite_difference").meta_gradient(student, ids, mask, rows, y, quiz, lrs)
    exact = torch.cat([g.flatten() for g in meta["grads"]])
    approx = torch.cat([g.flatten() for g in fd["grads"]])
    assert torch.linalg.norm(exact - approx) / torch.linalg.norm(exact) < 1e-3


def test_student_step_equals_a_plain_distillation_step_from_the_updated_teachers(setup):
    tk, labels, _, student0 = setup
    student = copy.deepcopy(student0)
    strategy = _strategy(setup)
    fs = FitSettings(epochs=1, batch_size=8, lr=1e-3, head_lr=1e-3, warmup=0.0)
    opts = strategy.configure_optimizers(student, fs, 10)
    ctx = StepContext(student, None, opts, fs, "cpu", "fp32", 10, 10, None, list(range(18)))
    before = copy.deepcopy(student)
    opt_state = copy.deepcopy(opts[0].optimizer.state_dict())
    teachers_before = [copy.deepcopy(t.state_dict()) for t in strategy.live]
    from distill.trainer import Batch

    rows = list(range(8))
    ids, mask = tk.batch(rows, "cpu")
    batch = Batch(rows, torch.tensor([labels[r] for r in rows]), ids, mask)
    torch.manual_seed(0)
    out = strategy.training_step(batch, ctx)
    assert {"kd", "task", "quiz"} <= set(out)
    assert any(not torch.equal(a, b) for st, t in zip(teachers_before, strategy.live)
               for a, b in zip(st.values(), t.state_dict().values())), "the teachers were not meta-updated"
    # the same step, by hand: the updated teachers' mean logits, the KD objective, one AdamW step
    ref = before
    ref_opts = strategy.configure_optimizers(ref, fs, 10)
    ref_opts[0].optimizer.load_state_dict(opt_state)
    ref_ctx = StepContext(ref, None, ref_opts, fs, "cpu", "fp32", 10, 10, None, list(range(18)))
    with torch.no_grad():
        t = torch.stack([m(ids, mask).logits for m in strategy.live]).mean(0)
    loss, _, _ = kd_objective(ref(ids, mask).logits, t, batch.labels, 0.5, 2.0)
    ref_ctx.backward_step(loss)
    for (n, a), b in zip(student.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-12), n


def test_noise_replaces_only_ordinary_tokens_at_the_given_rate(setup):
    tk = setup[0]
    ids, mask = tk.batch(list(range(24)), "cpu")
    special = list(tk.tokenizer.all_special_ids)
    noisy = inject_noise(ids, mask, 0.2, len(tk.tokenizer), special, torch.Generator().manual_seed(1))
    eligible = mask.bool() & ~torch.isin(ids, torch.tensor(special))
    changed = noisy != ids
    assert not (changed & ~eligible).any()  # [CLS], [SEP] and padding untouched
    rate = changed.sum().item() / eligible.sum().item()
    assert 0.12 < rate < 0.25  # p = 0.2, less the draws that hit the same id
    assert not torch.isin(noisy[changed], torch.tensor(special)).any()
    assert torch.equal(inject_noise(ids, mask, 0.0, len(tk.tokenizer), special), ids)


def test_metadistil_run_with_extra_teacher_warmup_noise_survives_a_kill(tmp_path, tiny_teachers, tiny_csv, tiny_run,
                                                                      monkeypatch):
    """Two copies of one teacher (different head seeds), warm-up and noise; killed after the first
    distillation epoch, resumed: the report equals the uninterrupted run's, the quiz set is recorded, the
    meta-updated teachers are in the run folder and the teacher store is untouched."""
    import distill.students as pl  # the student phase checkpoints through it

    store = tmp_path / "store"
    sets = ["--set", "metadistil.quiz_size=12", "--set", "metadistil.quiz_batch_size=6", "--set",
            "metadistil.warmup_epochs=1", "--set", "metadistil.noise_p=0.2", "--set", "metadistil.teacher_lr=1e-3", "--set", "metadistil.teacher_dev_texts=8",
            "--weak-teacher-margin", "none"]
    teachers = [tiny_teachers[0], tiny_teachers[0]]

    def args(out):
        return tiny_run_args(out, teachers, tiny_csv, strategy="metadistil", baselines="nokd", teacher_store=store,
                             teacher_mode="independent") + sets

    ref = tmp_path / "ref"
    res = runner.invoke(app, args(ref))
    assert res.exit_code == 0, res.output
    store_files = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}

    class Killed(BaseException):
        pass

    real = pl.save_checkpoint
    calls = []

    def killing_checkpoint(path, state):
        real(path, state)
        calls.append(path)
        if "metadistil" in str(path) and len(state["logs"]) == 2:  # after warm-up + one meta epoch
            raise Killed("simulated kill")

    monkeypatch.setattr(pl, "save_checkpoint", killing_checkpoint)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        runner.invoke(app, args(out) + ["--student-epochs", "2"], catch_exceptions=False)
    monkeypatch.setattr(pl, "save_checkpoint", real)
    res = runner.invoke(app, args(out) + ["--student-epochs", "2", "--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming student/metadistil/seed13 after epoch 2" in (out / "log.txt").read_text()
    a = json.loads((ref / "report.json").read_text())["runs"]["metadistil"][0]
    b = json.loads((out / "report.json").read_text())["runs"]["metadistil"][0]
    assert len(a["epochs"]) == 3  # 1 warm-up + 2 distillation epochs
    assert a["test"] == b["test"] and [e["loss"] for e in a["epochs"]] == [e["loss"] for e in b["epochs"]]
    assert a["epochs"][0]["components"].keys() == {"task"} and "quiz" in a["epochs"][1]["components"]
    assert a["epochs"][0]["extra"] == {} and {"teacher_0_dev_macro_f1", "teacher_1_dev_macro_f1"} <= set(a["epochs"][1]["extra"])
    assert a["quiz_texts"] == 12 and a["peak_memory_mb"] > 0
    assert a["train_texts"]["labelled"] + 12 == len(json.loads((ref / "split.json").read_text())["ids"]["train"])
    split = json.loads((ref / "split.json").read_text())
    assert split["quiz"]["size"] == 12 and set(split["quiz"]["ids"]) <= set(split["ids"]["train"])
    for d in a["updated_teachers"]:
        assert (ref / d / "model.safetensors").is_file()
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == store_files
    md = (ref / "report.md").read_text()
    assert "MetaDistil" in md
