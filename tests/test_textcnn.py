"""The TextCNN student (paper 003): shapes, padding invariance, vocabulary and embedding init, its
losses in camkd against hand-computed values, and both the heterogeneous (logit L2) and isomorphic
(BERT-CNN teachers, hint) runs end to end on tiny models."""

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_run_args
from distill.cli import app
from distill.errors import DistillError
from distill.modeling import ClassificationHead, load_classifier
from distill.strategies import StudentSignals, TeacherSignals, TeacherSpec, StudentSpec, build_strategy
from distill.textcnn import ConvFeatures, TextCNN, TextCNNSettings, build_vocab, pca_embeddings, textcnn_settings
from distill.trainer import Batch

runner = CliRunner()
SMALL = ["--set", "textcnn.epochs=3", "--set", "textcnn.filters=16", "--set", "textcnn.embed_dim=16"]


def _model(**kw):
    torch.manual_seed(0)
    return TextCNN(torch.arange(50) % 40, 4, TextCNNSettings(**kw)).eval()


def test_forward_shapes_and_parameter_count():
    m = _model()
    out = m(torch.randint(1, 50, (3, 11)), torch.ones(3, 11, dtype=torch.long))
    assert out.logits.shape == (3, 4) and out.pooled.shape == (3, 3 * 256) and out.hidden_states is None
    # embeddings 40 x 300 + convs 300*256*(2+3+4) + 3*256 biases + classifier 768*4 + 4
    assert sum(p.numel() for p in m.parameters()) == 40 * 300 + 300 * 256 * 9 + 3 * 256 + 768 * 4 + 4


def test_logits_do_not_depend_on_padding_or_batch():
    m = _model(filters=8, embed_dim=12)
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    alone = m(ids, torch.ones_like(ids)).logits
    padded = torch.cat([ids, torch.zeros(1, 20, dtype=torch.long)], 1)
    mask = (padded != 0).long()
    batch = torch.cat([padded, torch.randint(1, 50, (1, 25))])
    got = m(batch, torch.cat([mask, torch.ones(1, 25, dtype=torch.long)])).logits[:1]
    assert torch.allclose(alone, got, atol=1e-5)
    one_token = m(torch.tensor([[5]]), torch.tensor([[1]])).logits  # shorter than every kernel
    assert one_token.shape == (1, 4) and torch.isfinite(one_token).all()


def test_masked_max_is_the_max_over_windows_starting_on_real_tokens():
    f = ConvFeatures(2, kernel_sizes=(2,), filters=1)
    with torch.no_grad():
        f.convs[0].weight.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))  # x[t, 0] + x[t + 1, 1]
        f.convs[0].bias.zero_()
    x = torch.tensor([[[1.0, 0.0], [2.0, 3.0], [9.0, 9.0]]])  # third position is padding
    got = f(x, torch.tensor([[1, 1, 0]]))
    # windows starting at t=0: 1 + 3 = 4; t=1: 2 + 0 (padding zeroed) = 2; t=2 starts on padding
    assert got.item() == pytest.approx(4.0)


def test_vocabulary_most_frequent_first_with_unknown_and_padding_rows():
    id_map, kept = build_vocab([[5, 6, 6, 7], [6, 7, 9]], special_ids=[2], pad_id=0, unk_id=1,
                               tokenizer_size=12, max_rows=5)
    assert kept == [2, 6, 7]  # special first, then by count (6: 3, 7: 2); 5 and 9 cut by max_rows
    assert id_map[0] == 0 and id_map[1] == 1 and id_map[5] == 1 and id_map[9] == 1
    assert [id_map[i].item() for i in kept] == [2, 3, 4]


def test_pca_embeddings_zero_padding_row_and_unit_scale():
    torch.manual_seed(0)
    emb = torch.randn(30, 10) * 0.05
    Z = pca_embeddings(emb, kept=list(range(5, 25)), unk_id=1, dim=4)
    assert Z.shape == (22, 4) and torch.all(Z[0] == 0)
    assert Z[1:].std().item() == pytest.approx(1.0, rel=1e-4)
    # the first component carries the most variance of the centred teacher rows
    assert Z[1:, 0].var() >= Z[1:, 3].var()


def test_textcnn_settings_errors_name_the_setting():
    with pytest.raises(DistillError, match="--set textcnn.nope: textcnn has no setting"):
        textcnn_settings({"nope": 1})
    with pytest.raises(DistillError, match="--set textcnn.dropout"):
        textcnn_settings({"dropout": 1.5})
    with pytest.raises(DistillError, match="--set textcnn.kernel_sizes.1"):
        textcnn_settings({"kernel_sizes": [2, 0]})


def _camkd(feature_loss, pooled_size):
    t = [TeacherSpec(f"t{i}", 8, 2, [], False, pooled_size) for i in range(2)]
    return build_strategy("camkd", {"feature_loss": feature_loss, "alpha": 0.5, "temperature": 1.0, "beta": 0.5},
                          t, StudentSpec(pooled_size, 0, 2))


def test_camkd_logit_l2_loss_against_hand_computation():
    """Paper 003 eqs. (5), (11)-(13) with T = 1 on one sample, computed by hand."""
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])  # (N=2, B=1, C=2)
    y = torch.tensor([0])
    out = _camkd("logit", 2).loss(StudentSignals(zs, None, torch.ones(1, 2)), TeacherSignals(zt),
                                  Batch([0], y))
    import math
    L = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0))]  # CE(y, y_k)
    w0 = 1 - math.exp(L[0]) / (math.exp(L[0]) + math.exp(L[1]))  # eq. (5), K - 1 = 1
    w = [w0, 1 - w0]
    p = [[1 / (1 + math.exp(-2)), 1 - 1 / (1 + math.exp(-2))], [1 - 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-1))]]
    kd = sum(w[k] * -sum(p[k][c] * math.log(0.5) for c in range(2)) for k in range(2))
    task = math.log(2)
    l2 = w[0] * 4.0 + w[1] * 1.0
    assert out["logit"].item() == pytest.approx(l2, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * kd + 0.5 * task + 0.5 * l2, rel=1e-5)


def test_camkd_hint_loss_against_hand_computation():
    """Eqs. (8)-(10): smooth-L1 between the projected student feature and each teacher's feature."""
    s = _camkd("hint", 2)
    with torch.no_grad():
        for p in s.projections:
            p.weight.copy_(torch.eye(2))
            p.bias.zero_()
    zs = torch.zeros(1, 2)
    zt = torch.zeros(2, 1, 2)  # equal teachers -> w = 1/2 each
    fs = torch.tensor([[0.5, 3.0]])
    ft = torch.zeros(2, 1, 2)
    ft[1] = torch.tensor([[0.5, 1.0]])
    out = s.loss(StudentSignals(zs, None, torch.ones(1, 2), fs), TeacherSignals(zt, None, ft),
                 Batch([0], torch.tensor([0])))
    # teacher 0: smooth-L1(0.5) = 0.125, smooth-L1(3) = 2.5 -> mean 1.3125; teacher 1: 0 and 1.5 -> 0.75
    assert out["hint"].item() == pytest.approx(0.5 * 1.3125 + 0.5 * 0.75)


def test_cnn_head_feature_size():
    h = ClassificationHead(32, 3, pooling="cnn")
    logits, pooled = h(torch.randn(2, 7, 32), torch.ones(2, 7))
    assert logits.shape == (2, 3) and pooled.shape == (2, 768) and h.feature_size == 768


@pytest.mark.parametrize("variant", ["heterogeneous", "isomorphic"])
def test_textcnn_runs_save_and_reload(tmp_path, tiny_teachers, tiny_csv, tiny_run, variant):
    extra = ["--set", "camkd.feature_loss=logit"] if variant == "heterogeneous" else ["--pooling", "cnn"]
    store = tiny_run.parent / ".teacher-store"
    out = tmp_path / variant
    res = runner.invoke(app, tiny_run_args(out, tiny_teachers, tiny_csv, student="textcnn", strategy="camkd",
                                           baselines="nokd", teacher_store=store) + SMALL + extra)
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    comps = r["strategies"]["camkd"]["final_epoch_components"]
    assert ("logit" if variant == "heterogeneous" else "hint") in comps
    assert len(r["runs"]["camkd"][0]["epochs"]) == 3  # textcnn.epochs, not --student-epochs
    assert r["student"]["source"]["kind"] == "textcnn"
    assert r["student"]["params"] < 0.2 * r["ensemble"]["params"]
    model, tok, meta = load_classifier(out / "student")
    assert meta["architecture"] == "textcnn" and meta["textcnn"]["filters"] == 16
    enc = tok(["market shares profit", "match team"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(enc["input_ids"], enc["attention_mask"]).logits
    assert logits.shape == (2, 4)
    assert "TextCNN" in (out / "report.md").read_text()


def test_textcnn_refuses_a_layer_loss_before_training(tmp_path, tiny_teachers, tiny_csv):
    # mtbert's hidden loss (off by default since 0.3; on in the paper preset) needs Transformer layers
    res = runner.invoke(app, tiny_run_args(tmp_path / "r", tiny_teachers, tiny_csv, student="textcnn")
                        + ["--set", "mtbert.preset=paper"])
    assert res.exit_code != 0 and "needs the student's Transformer layers" in res.output
    assert not (tmp_path / "r" / "teachers").exists()
    # the default mtbert (eq. (2) soft labels + task loss) needs no layers: it distils a TextCNN
    res = runner.invoke(app, tiny_run_args(tmp_path / "m", tiny_teachers, tiny_csv, student="textcnn", baselines="")
                        + SMALL)
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "m" / "report.json").read_text())
    assert r["student"]["strategy"] == "mtbert" and "no hidden loss" in r["runs"]["mtbert"][0]["description"]
    res = runner.invoke(app, tiny_run_args(tmp_path / "s", tiny_teachers, tiny_csv, strategy="camkd")
                        + ["--set", "textcnn.filters=8"])
    assert res.exit_code != 0 and "need --student textcnn" in res.output


def test_layer_free_teacher_cache_serves_students_of_any_shape(tmp_path, tiny_teachers, tiny_csv):
    """A cache file without layer states (camkd) is reused by a TextCNN run: the student's depth is not
    part of its key."""
    store = tmp_path / "store"
    args = dict(strategy="camkd", baselines="nokd", teacher_store=store)
    res = runner.invoke(app, tiny_run_args(tmp_path / "a", tiny_teachers, tiny_csv, student_layers=1, **args))
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, tiny_run_args(tmp_path / "b", tiny_teachers, tiny_csv, student="textcnn", **args) + SMALL)
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / x / "report.json").read_text())["cache"] for x in "ab")
    assert not a["reused"] and b["reused"] and a["file"] == b["file"]


# ------------------------------------------------------------------------ export and serving
@pytest.fixture(scope="module")
def textcnn_run(tmp_path_factory, tiny_teachers, tiny_csv, tiny_run):
    """A tiny TextCNN run that has learnt the synthetic topics (camkd, logit L2)."""
    out = tmp_path_factory.mktemp("tcnn") / "run"
    res = runner.invoke(app, tiny_run_args(out, tiny_teachers, tiny_csv, student="textcnn", strategy="camkd",
                                           baselines="nokd", teacher_store=tiny_run.parent / ".teacher-store")
                        + ["--set", "camkd.feature_loss=logit", "--set", "textcnn.epochs=12", "--set",
                           "textcnn.filters=16", "--set", "textcnn.embed_dim=16", "--set", "textcnn.lr=0.01"])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("int8", ["dynamic", "static", "auto"])
def test_textcnn_export_parity(textcnn_run, tmp_path, int8):
    import onnx

    from export.onnx_export import export_run

    ok = export_run(textcnn_run, out=tmp_path / "exp", int8=int8, latency_runs=0, quiet=True)
    m = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert ok and m["student"]["architecture"] == "textcnn"
    # auto: a TextCNN tries static first (dynamic INT8 convolutions run slower than fp32 in ONNX Runtime)
    assert m["parity"]["fp32"]["max_abs_logit_diff"] <= 1e-4
    assert m["parity"]["int8"]["method"] == ("static" if int8 == "auto" else int8)
    test_f1 = json.loads((textcnn_run / "report.json").read_text())["student"]["test"]["macro_f1"]
    assert test_f1 > 60  # the model learnt something, so agreement below is not trivial
    assert m["parity"]["int8"]["agreement_pct"] >= 90
    ops = {n.op_type for n in onnx.load(str(tmp_path / "exp" / m["models"]["int8"]["file"])).graph.node}
    if int8 != "dynamic":  # the convolutions run on INT8 (QDQ around Conv)
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert "Conv" in {n.op_type for n in onnx.load(str(tmp_path / "exp" / m["models"]["fp32"]["file"])).graph.node}


def test_textcnn_service_answers_like_offline_onnx(textcnn_run, tmp_path):
    httpx = pytest.importorskip("httpx")
    import numpy as np

    from export.onnx_export import export_run
    from serve.launcher import Server
    from test_serve import SERVER_ENV, offline_predict

    exp = tmp_path / "exp"
    export_run(textcnn_run, out=exp, latency_runs=0, quiet=True)
    texts = ["market shares profit bank", "match team player goal season", "software computer phone"]
    expected, _ = offline_predict(exp, texts)
    srv = Server(exp, env=SERVER_ENV, ready_timeout_s=90, log_path=tmp_path / "server.log")
    srv.start()
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        r = httpx.post(f"{srv.url}/classify", json={"texts": texts}, timeout=30)
        assert r.status_code == 200, r.text
        got = r.json()
        labels = json.loads((exp / "labels.json").read_text())["label_names"]
        assert [g["label"] for g in got] == [labels[i] for i in expected.argmax(1)]
        assert np.allclose([g["score"] for g in got], expected.max(1), atol=1e-4)
    finally:
        srv.stop()


def test_bench_shows_textcnn_beside_transformer_student_and_reference_models(textcnn_run, tiny_run):
    res = runner.invoke(app, ["bench", str(textcnn_run), "--quick", "--no-textbrewer", "--student-run", str(tiny_run),
                              "--reference", "tfidf-lr,model2vec"])
    assert res.exit_code == 0, res.output
    out = textcnn_run / "bench"
    r = json.loads((out / "results.json").read_text())
    by = {v["name"]: v for v in r["inference"]["variants"]}
    assert by["student"]["architecture"] == "textcnn" and by["onnx_int8"]["architecture"] == "textcnn"
    assert by[f"{tiny_run.name}/student"]["architecture"] == "transformer"
    assert {"ref_tf-idf_lr", "ref_model2vec", "ensemble", "teacher_0", "teacher_1"} <= set(by)
    for name in ("ref_tf-idf_lr", "ref_model2vec"):
        v = by[name]
        assert v["includes_text_processing"] and v["size_mb"] > 0 and v["train_s"] > 0
        assert v["latency"]["1"]["p50_ms"] > 0 and set(v["latency"]) == {"1", "8"}
    # the ratios are computed against the TextCNN student measured in the same loop
    assert r["inference"]["ratios"]["ref_model2vec"]["vs_student_fp32"]["speedup_p50"]["1"] == pytest.approx(
        by["student"]["latency"]["1"]["p50_ms"] / by["ref_model2vec"]["latency"]["1"]["p50_ms"])
    assert {"camkd_cache", "camkd_online", "nokd"} <= set(r["training"]["fresh"])  # the run's strategy, not mtbert
    assert "accuracy_vs_latency.png" in r["plots"] and (out / "accuracy_vs_latency.png").stat().st_size > 1000
    md = (out / "REPORT.md").read_text()
    assert "reference: TF-IDF + LR" in md and "latency includes their own text processing" in md


def test_bench_refuses_a_student_run_with_another_test_split(textcnn_run, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(textcnn_run, other, ignore=shutil.ignore_patterns("bench", "export"))
    split = json.loads((other / "split.json").read_text())
    split["ids"]["test"] = split["ids"]["test"][1:]
    (other / "split.json").write_text(json.dumps(split))
    from benchmarks.student_variants import check_same_test_split

    with pytest.raises(DistillError, match="test split differs"):
        check_same_test_split(textcnn_run, other)
