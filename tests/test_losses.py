"""Every loss against values computed by hand (see the comments for the arithmetic)."""

import math

import pytest
import torch
from torch import nn

from distill import losses

LN3 = math.log(3.0)


def test_soft_cross_entropy_hand_value():
    # p = [.5, .5], softmax([0, ln3]) = [.25, .75]: -(.5 ln .25 + .5 ln .75) = 0.836988
    p = torch.tensor([[0.5, 0.5]])
    z = torch.tensor([[0.0, LN3]])
    assert losses.soft_cross_entropy(p, z).item() == pytest.approx(0.836988, abs=1e-5)


def test_mtbert_distill_loss_eq2_two_teachers():
    # student softmax = [.25, .75]; gold y = 0
    # teacher 1: p=[.5,.5]  CE(p,s)=0.836988, CE(y,y1)=ln2=0.693147 -> /1.693147 = 0.494339
    # teacher 2: p=[.75,.25] CE(p,s)=.75 ln4 + .25 ln(4/3)=1.111641, CE(y,y2)=-ln .75=0.287682 -> 0.863292
    s = torch.tensor([[0.0, LN3]])
    t = torch.tensor([[[0.0, 0.0]], [[LN3, 0.0]]])
    y = torch.tensor([0])
    assert losses.mtbert_distill_loss(s, t, y).item() == pytest.approx(0.494339 + 0.863292, abs=1e-5)
    # without loss weighting (Fig. 4 ablation): plain sum of the two soft CEs
    assert losses.mtbert_distill_loss(s, t, y, loss_weighting=False).item() == pytest.approx(0.836988 + 1.111641, abs=1e-5)


def test_mtbert_distill_loss_temperature_and_weight_at_t1():
    # t=2: teacher [0, 2ln3]/2 -> [.25,.75]; student same -> CE = entropy = 0.562335
    # weight uses the T=1 teacher softmax [0.1, 0.9], gold y=1: 1/(1 - ln .9) = 1/1.105361 = 0.904682 -> 0.508734
    s = torch.tensor([[0.0, 2 * LN3]])
    t = torch.tensor([[[0.0, 2 * LN3]]])
    assert losses.mtbert_distill_loss(s, t, torch.tensor([1]), temperature=2.0).item() == pytest.approx(0.508734, abs=1e-5)


def test_mtbert_distill_loss_batch_mean():
    s = torch.tensor([[0.0, LN3], [0.0, LN3]])
    t = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    y = torch.tensor([0, 0])
    assert losses.mtbert_distill_loss(s, t, y).item() == pytest.approx(0.494339, abs=1e-5)


def test_task_loss_eq3():
    # CE(y=1, softmax([0, ln3])) = -ln .75 = 0.287682
    assert losses.task_loss(torch.tensor([[0.0, LN3]]), torch.tensor([1])).item() == pytest.approx(0.287682, abs=1e-5)


def test_teacher_gold_ce_shape_and_values():
    t = torch.tensor([[[0.0, 0.0]], [[LN3, 0.0]]])
    ce = losses.teacher_gold_ce(t, torch.tensor([0]))
    assert ce.shape == (2, 1)
    assert ce[0, 0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert ce[1, 0].item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_hidden_mse_token_level_masked():
    hs = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    ht = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])
    # only token 0 counts: (0^2 + 2^2) / 2 = 2
    assert losses.hidden_mse(hs, ht, torch.tensor([[1, 0]])).item() == pytest.approx(2.0)
    # both tokens: (0 + 4 + 0 + 16) / 4 = 5
    assert losses.hidden_mse(hs, ht, torch.tensor([[1, 1]])).item() == pytest.approx(5.0)


def _identity(d):
    lin = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(d))
    return lin


def test_mtbert_hidden_loss_eq1_token_and_pooled():
    hs = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (B=1, L=2, d=2), one student layer
    mask = torch.tensor([[1, 1]])
    tok_teacher = [torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])]  # token-level: MSE = 5
    pooled_teacher = [torch.tensor([[0.0, 0.0]])]  # student mean [2, 3]: (4 + 9) / 2 = 6.5
    proj = [[_identity(2)], [_identity(2)]]
    total = losses.mtbert_hidden_loss([hs], [tok_teacher, pooled_teacher], proj, mask, [True, False])
    assert total.item() == pytest.approx(5.0 + 6.5)


def test_mtbert_hidden_loss_uses_learnable_projection():
    hs = torch.zeros(1, 1, 2)
    t = [torch.ones(1, 1, 3)]
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)  # W h = [3, 3] -> MSE = 9
    total = losses.mtbert_hidden_loss([hs], [t], [[lin]], torch.tensor([[1]]), [True])
    assert total.item() == pytest.approx(9.0)
    total.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_hinton_kd_hand_value():
    # T=2: teacher [0, 2ln3]/2 -> [.25, .75]; student [0,0] -> [.5,.5]: CE = ln2; x T^2 = 4 ln 2
    v = losses.hinton_kd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2 * LN3]]), temperature=2.0)
    assert v.item() == pytest.approx(4 * math.log(2), abs=1e-5)


def test_average_ensemble_kd_hand_value():
    # teachers at T=2 -> [.25,.75] and [.75,.25], mean [.5,.5]; student [0, 2ln3]/2 -> [.25,.75]
    # CE = 0.836988; x T^2 = 3.347952
    t = torch.tensor([[[0.0, 2 * LN3]], [[2 * LN3, 0.0]]])
    v = losses.average_ensemble_kd_loss(torch.tensor([[0.0, 2 * LN3]]), t, temperature=2.0)
    assert v.item() == pytest.approx(3.347952, abs=1e-5)


def test_distill_loss_gradient_flows_to_student_only():
    s = torch.tensor([[0.2, -0.1, 0.3]], requires_grad=True)
    t = torch.randn(2, 1, 3, requires_grad=True)
    losses.mtbert_distill_loss(s, t, torch.tensor([2])).backward()
    assert s.grad.abs().sum() > 0
    # teacher logits enter the soft labels (no gradient needed) and the weight (detached)
