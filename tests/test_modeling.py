"""Attentive pooling, layer mapping, strategies and classifier folders."""

import torch

from distill.modeling import AttentivePooling, ClassificationHead, layer_map, masked_mean
from distill.strategies import STRATEGIES, StudentSignals, StudentSpec, TeacherSignals, TeacherSpec, build_strategy
from distill.trainer import Batch


def test_attentive_pooling_ignores_padding():
    torch.manual_seed(0)
    pool = AttentivePooling(4, query_dim=200)
    h = torch.randn(1, 3, 4)
    mask = torch.tensor([[1, 1, 0]])
    e1 = pool(h, mask)
    h2 = h.clone()
    h2[0, 2] = 1e4  # a padding token must not change the result
    assert torch.allclose(e1, pool(h2, mask), atol=1e-6)
    # single real token -> its own state
    assert torch.allclose(pool(h, torch.tensor([[1, 0, 0]])), h[:, 0], atol=1e-6)
    assert pool.proj.out_features == 200


def test_attentive_pooling_weights_sum_to_one():
    pool = AttentivePooling(2, 8)
    h = torch.ones(2, 5, 2)
    out = pool(h, torch.ones(2, 5, dtype=torch.long))
    assert torch.allclose(out, torch.ones(2, 2), atol=1e-6)  # convex combination of identical rows


def test_masked_mean():
    h = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    assert torch.allclose(masked_mean(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_layer_map_uniform():
    assert layer_map(3, 6) == [2, 4, 6]
    assert layer_map(3, 12) == [4, 8, 12]
    assert layer_map(6, 12) == [2, 4, 6, 8, 10, 12]  # T*j with T = 2
    assert layer_map(2, 3) == [2, 3]
    assert layer_map(4, 2) == [1, 1, 2, 2]


def test_head_shapes():
    head = ClassificationHead(8, 5)
    logits, pooled = head(torch.randn(3, 7, 8), torch.ones(3, 7, dtype=torch.long))
    assert logits.shape == (3, 5) and pooled.shape == (3, 8)


def test_registered_strategies_and_losses():
    assert {"mtbert", "nokd", "hinton", "avg"} <= set(STRATEGIES)
    teachers = [TeacherSpec("a", 8, 4, [2, 4], True), TeacherSpec("b", 12, 2, [1, 2], False)]
    B, L, C = 3, 5, 4
    mask = torch.ones(B, L, dtype=torch.long)
    s = StudentSignals(torch.randn(B, C, requires_grad=True), [torch.randn(B, L, 6) for _ in range(2)], mask)
    t = TeacherSignals(torch.randn(2, B, C), [[torch.randn(B, L, 8) for _ in range(2)], [torch.randn(B, 12) for _ in range(2)]])
    batch = Batch([0, 1, 2], torch.tensor([0, 1, 2]))
    for name in ("mtbert", "nokd", "hinton", "avg"):
        strat = build_strategy(name, {}, teachers, StudentSpec(6, 2))
        out = strat(s, t, batch)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        if "teacher_weights" in out:  # (B, N), rows sum to 1
            assert out["teacher_weights"].shape == (B, 2)
            assert torch.allclose(out["teacher_weights"].sum(1), torch.ones(B))
    assert set(build_strategy("mtbert", {}, teachers, StudentSpec(6, 2))(s, t, batch)) == {
        "loss", "dis", "task", "teacher_weights"}  # the default has no hidden loss (w_hid = 0 since 0.3)
    mt = build_strategy("mtbert", {"preset": "paper"}, teachers, StudentSpec(6, 2))
    assert set(mt(s, t, batch)) == {"loss", "hid", "dis", "task", "teacher_weights"}
    # one W_ij per teacher and student layer, mapping d_i -> d_s
    assert [[p.weight.shape for p in row] for row in mt.projections] == [[(6, 8)] * 2, [(6, 12)] * 2]


def test_unknown_strategy_error():
    import pytest

    from distill.errors import DistillError

    with pytest.raises(DistillError, match="unknown strategy"):
        build_strategy("nope", {}, [], StudentSpec(4, 1))


def test_mtbert_without_any_loss_is_refused():
    import pytest

    from distill.errors import DistillError

    with pytest.raises(DistillError, match="all three loss weights are 0"):
        build_strategy("mtbert", {"w_kd": 0, "w_task": 0}, [], StudentSpec(4, 1))
