"""Per-sample teacher weights (CA-MKD eq. (5), EBKD, AE-KD min-norm), the weighted KD loss and the
REINFORCE update of the selection policy, against values computed by hand (arithmetic in comments)."""

import math

import numpy as np
import pytest
import torch

from distill import losses
from distill.strategies import StudentSignals, StudentSpec, TeacherSignals, TeacherSpec, build_strategy
from distill.trainer import Batch
from distill.weighting import (camkd_weights, entropy_weights, min_norm_weights, project_capped_simplex)

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_camkd_eq5_two_teachers_by_hand():
    # L = [ln 2, -ln .75]: exp(L) = [2, 4/3], softmax = [0.6, 0.4]; N - 1 = 1 -> w = [0.4, 0.6]
    w = camkd_weights(torch.tensor([[LN2], [-math.log(0.75)]]))
    assert w[:, 0].tolist() == pytest.approx([0.4, 0.6], abs=1e-6)


def test_camkd_eq5_three_teachers_by_hand():
    # L = [0, ln2, ln3]: exp = [1, 2, 3] / 6; w = (1 - s) / 2 = [5/12, 1/3, 1/4] (sums to 1)
    w = camkd_weights(torch.tensor([[0.0], [LN2], [LN3]]))
    assert w[:, 0].tolist() == pytest.approx([5 / 12, 1 / 3, 1 / 4], abs=1e-6)
    assert camkd_weights(torch.tensor([[2.0, 1.0]])).tolist() == [[1.0, 1.0]]  # one teacher: weight 1


def test_camkd_weights_from_teacher_logits():
    # gold y = 0; teacher 1 logits [0, 0] -> CE ln 2; teacher 2 [ln3, 0] -> p = [.75, .25], CE -ln .75
    t = torch.tensor([[[0.0, 0.0]], [[LN3, 0.0]]])
    w = camkd_weights(losses.teacher_gold_ce(t, torch.tensor([0])))
    assert w[:, 0].tolist() == pytest.approx([0.4, 0.6], abs=1e-6)


def test_ebkd_weights_by_hand():
    # teacher 1 [0, 0]: H = ln 2 = 0.693147; teacher 2 [ln3, 0] -> [.75, .25]: H = -(.75 ln .75 + .25 ln .25) = 0.562335
    # w_1 = 1 - H_1 / (H_1 + H_2) = H_2 / (H_1 + H_2) = 0.447905; w_2 = 0.552095 (the more confident teacher)
    w = entropy_weights(torch.tensor([[[0.0, 0.0]], [[LN3, 0.0]]]))
    assert w[:, 0].tolist() == pytest.approx([0.447905, 0.552095], abs=1e-5)
    # three teachers, H = [ln2, 0.562335, ln2]: w_k = (1 - H_k / sum H) / 2, sum H = 1.948629
    w3 = entropy_weights(torch.tensor([[[0.0, 0.0]], [[LN3, 0.0]], [[0.0, 0.0]]]))
    s = 2 * LN2 + 0.562335
    assert w3[:, 0].tolist() == pytest.approx([(1 - LN2 / s) / 2, (1 - 0.562335 / s) / 2, (1 - LN2 / s) / 2], abs=1e-5)
    assert w3.sum(0).item() == pytest.approx(1.0)
    # every teacher certain (H = 0): uniform
    assert entropy_weights(torch.tensor([[[50.0, 0.0]], [[0.0, 50.0]]]))[:, 0].tolist() == pytest.approx([0.5, 0.5])


def test_min_norm_two_teachers_closed_form_and_lower_bound():
    # g1 = [1, 0], g2 = [0, 2]: min w1^2 + 4 w2^2 with w1 + w2 = 1 -> w1 = 4/5 (closed form
    # gamma = (g2 - g1).g2 / |g1 - g2|^2 = 4 / 5)
    G = np.array([[1.0, 0.0], [0.0, 4.0]])
    assert min_norm_weights(G, 0.0, 1.0).tolist() == pytest.approx([0.8, 0.2], abs=1e-6)
    # tolerance C = 0.6: w1 capped at 0.6, so w2 sits on its lower bound 1 - C = 0.4
    assert min_norm_weights(G, 0.0, 0.6).tolist() == pytest.approx([0.6, 0.4], abs=1e-6)
    # opposite gradients g2 = -2 g1: the hull contains 0 at w1 = 2/3 (no bound active)
    G2 = np.array([[1.0, -2.0], [-2.0, 4.0]])
    assert min_norm_weights(G2, 0.0, 1.0).tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-6)


def test_min_norm_three_teachers_cap_by_hand():
    # G = diag(1, 4, 9): unconstrained w ~ [1, 1/4, 1/9] = [.7347, .1837, .0816]; with C = 0.6 the first is
    # capped and the remaining 0.4 splits ~ [1/4, 1/9]: [0.6, 0.276923, 0.123077]
    w = min_norm_weights(np.diag([1.0, 4.0, 9.0]), 0.0, 0.6)
    assert w.tolist() == pytest.approx([0.6, 0.4 * 9 / 13, 0.4 * 4 / 13], abs=1e-6)
    w = min_norm_weights(np.diag([1.0, 4.0, 9.0]), 0.0, 1.0)
    assert w.tolist() == pytest.approx([36 / 49, 9 / 49, 4 / 49], abs=1e-6)


def test_min_norm_matches_one_class_svm_reference_solver():
    """The AE-KD authors solve the same QP with sklearn's OneClassSVM (nu = 1 / (C N), w = alpha / (N nu))."""
    from sklearn.svm import OneClassSVM

    rng = np.random.default_rng(0)
    for n, C in ((2, 0.6), (3, 0.6), (5, 0.3), (4, 1.0)):
        g = rng.normal(size=(n, 12))
        G = g @ g.T
        nu = 1 / (C * n)
        svm = OneClassSVM(kernel="precomputed", nu=nu, tol=1e-9).fit(G)
        ref = np.zeros(n)
        ref[svm.support_] = svm.dual_coef_[0] / (n * nu)
        ours = min_norm_weights(G, 0.0, C)
        assert ours @ G @ ours == pytest.approx(ref @ G @ ref, rel=1e-4, abs=1e-8)
        assert ours.sum() == pytest.approx(1.0) and ours.max() <= C + 1e-9 and ours.min() >= -1e-12


def test_capped_simplex_projection():
    assert project_capped_simplex(np.array([2.0, 0.0]), 0.0, 0.6).tolist() == pytest.approx([0.6, 0.4])
    assert project_capped_simplex(np.array([0.3, 0.3, 0.3]), 0.0, 1.0).tolist() == pytest.approx([1 / 3] * 3)


def test_weighted_kd_uniform_equals_average_ensemble():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3), torch.randn(2, 4, 3)
    w = torch.full((2, 4), 0.5)
    assert losses.weighted_kd_loss(s, t, w, 2.0).item() == pytest.approx(
        losses.average_ensemble_kd_loss(s, t, 2.0).item(), abs=1e-5)


def test_weighted_kd_hand_value():
    # T = 1, student [0, ln3] -> [.25, .75]; teacher 1 [0, 0] -> CE = 0.836988, teacher 2 [ln3, 0] -> CE 1.111641
    # weights [0.4, 0.6]: 0.4 * 0.836988 + 0.6 * 1.111641 = 1.001780
    s = torch.tensor([[0.0, LN3]])
    t = torch.tensor([[[0.0, 0.0]], [[LN3, 0.0]]])
    assert losses.weighted_kd_loss(s, t, torch.tensor([[0.4], [0.6]]), 1.0).item() == pytest.approx(1.001780, abs=1e-5)


def test_hint_and_logit_losses_by_hand():
    # smooth-L1 (beta 1): diffs [0.5, 2] -> [0.5 * 0.25, 2 - 0.5] = [0.125, 1.5], mean 0.8125
    h = losses.hint_loss_per_teacher(torch.tensor([[[0.5, 2.0]]]), torch.zeros(1, 1, 2))
    assert h.item() == pytest.approx(0.8125)
    # ||[1, 2] - [0, 0]||^2 = 5
    assert losses.logit_l2_per_teacher(torch.zeros(1, 2), torch.tensor([[[1.0, 2.0]]])).item() == pytest.approx(5.0)


def _signals(B=3, C=2, N=2, d=4):
    torch.manual_seed(1)
    s = StudentSignals(torch.randn(B, C, requires_grad=True), None, torch.ones(B, 5, dtype=torch.long),
                       torch.randn(B, d, requires_grad=True))
    t = TeacherSignals(torch.randn(N, B, C), None, torch.randn(N, B, d))
    return s, t, Batch(list(range(B)), torch.tensor([0, 1, 0][:B]))


def _teachers(N=2, d=4):
    return [TeacherSpec(f"t{i}", d, 2, [1, 2], True, d, 80.0 + i) for i in range(N)]


def test_camkd_strategy_total_by_hand():
    s, t, batch = _signals()
    strat = build_strategy("camkd", {"feature_loss": "logit", "beta": 0.25}, _teachers(), StudentSpec(4, 2, 2))
    out = strat(s, t, batch)
    w = camkd_weights(losses.teacher_gold_ce(t.logits, batch.labels))
    kd = (w * losses.kd_per_teacher(s.logits, t.logits, 2.0)).sum(0).mean()
    l2 = (w * ((t.logits - s.logits.unsqueeze(0)) ** 2).sum(-1)).sum(0).mean()
    ce = torch.nn.functional.cross_entropy(s.logits, batch.labels)
    assert out["loss"].item() == pytest.approx((0.5 * ce + 0.5 * kd + 0.25 * l2).item(), abs=1e-5)
    assert torch.allclose(out["teacher_weights"], w.T)
    out["loss"].backward()
    assert s.logits.grad is not None
    hint = build_strategy("camkd", {}, _teachers(), StudentSpec(4, 2, 2))
    o2 = hint(s, t, batch)
    assert "hint" in o2 and len(list(hint.parameters())) == 4  # one Linear(d_s, d_c) per teacher


def test_aekd_gradients_and_weights():
    s, t, batch = _signals()
    strat = build_strategy("aekd", {}, _teachers(), StudentSpec(4, 2, 2))
    g = strat.teacher_gradients(s.logits, t.logits)
    # analytic: d/dz T^2 CE(p_k, softmax(z/T)) = T (softmax(z/T) - p_k); mean over B -> / B
    T, B = 2.0, 3
    ref = T * (torch.softmax(s.logits / T, -1).unsqueeze(0) - torch.softmax(t.logits / T, -1)) / B
    assert torch.allclose(g, ref.flatten(1), atol=1e-6)
    w = strat.weights(s, t, batch)
    assert w.shape == (2, 3) and torch.allclose(w.sum(0), torch.ones(3))
    assert w.max() <= 0.6 + 1e-6 and w.min() >= 0.4 - 1e-6  # two teachers, C = 0.6
    G = (g @ g.T).double().numpy()
    assert torch.allclose(w[:, 0].double(), torch.from_numpy(min_norm_weights(G, 0.0, 0.6)), atol=1e-6)
    assert s.logits.grad is None  # the weights never touch the student's graph


def test_aekd_rejects_infeasible_tolerance():
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="aekd.C"):
        build_strategy("aekd", {"C": 0.3}, _teachers(2), StudentSpec(4, 2, 2))


def test_reinforce_raises_log_probability_of_rewarded_selection():
    from distill.strategies.rl import SelectionPolicy, reinforce_step

    torch.manual_seed(0)
    policy = SelectionPolicy(5, 2, 0.5)
    torch.nn.init.normal_(policy.linear.weight, std=0.1)
    opt = torch.optim.Adam(policy.parameters(), lr=0.05)
    states = torch.randn(8, 5)
    actions = torch.tensor([[1.0, 0.0]] * 8)
    before = policy.log_prob(states, actions).mean().item()
    reinforce_step(policy, opt, states, actions, advantage=1.0)
    after = policy.log_prob(states, actions).mean().item()
    assert after > before
    reinforce_step(policy, opt, states, actions, advantage=-1.0)  # a penalised selection becomes less likely
    assert policy.log_prob(states, actions).mean().item() < after


def test_rl_weights_split_between_selected_teachers():
    s, t, batch = _signals()
    strat = build_strategy("rl", {"init_prob": 0.5}, _teachers(), StudentSpec(4, 2, 2))
    strat.train()
    torch.manual_seed(3)
    w = strat.weights(s, t, batch)
    a = strat.buffer_actions[-1]
    assert strat.buffer_states[-1].shape == (3, strat.state_dim) and strat.state_dim == 4 + 2 * 2 + 2 + 2
    for b in range(3):
        k = a[b].sum().item()
        expected = a[b] / k if k else torch.zeros(2)
        assert torch.allclose(w[:, b], expected)


def test_aekd_with_a_single_teacher_gives_it_weight_one():
    from distill.strategies.base import TeacherSignals

    s, t, batch = _signals()
    one = build_strategy("aekd", {}, _teachers(1), StudentSpec(4, 2, 2))  # C = 0.6 < 1/N is fine for N = 1
    w = one.weights(s, TeacherSignals(t.logits[:1]), batch)
    assert torch.equal(w, torch.ones(1, 3))
