"""The INT8 parity gate (export.parity.int8_gate) on hand-made predictions, with hand-computed p-values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.parity import TARGETS, binomial_upper_tail, int8_gate, paired_drop_upper_bound


def paired(n: int, b: int, c: int, both_wrong: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fp32 predictions, INT8 predictions, labels) for n texts of which b are right in fp32 only, c right
    in INT8 only, ``both_wrong`` wrong in both (with different wrong classes) and the rest right in both."""
    y = np.zeros(n, dtype=int)
    ref, q = y.copy(), y.copy()
    q[:b] = 1
    ref[b:b + c] = 2
    ref[b + c:b + c + both_wrong], q[b + c:b + c + both_wrong] = 1, 2
    return ref, q, y


def test_one_flip_on_100_texts_passes():
    g = int8_gate(*paired(100, b=1, c=0))
    assert (g["n"], g["b"], g["c"]) == (100, 1, 0)
    assert g["accuracy_drop_pts"] == pytest.approx(1.0) and g["agreement_pct"] == pytest.approx(99.0)
    assert g["p_value"] == pytest.approx(0.5)  # P(X >= 1), X ~ Bin(1, 1/2)
    assert g["passed"] and "not significant" in g["reason"]


def test_improvement_never_fails():
    g = int8_gate(*paired(100, b=3, c=9))
    assert g["accuracy_drop_pts"] == pytest.approx(-6.0)
    assert g["passed"] and "no worse" in g["reason"]
    # P(X >= 3), X ~ Bin(12, 1/2) = 1 - (1 + 12 + 66) / 4096
    assert g["p_value"] == pytest.approx(1 - 79 / 4096)
    assert int8_gate(*paired(100, b=0, c=0))["passed"]


def test_large_significant_drop_fails():
    g = int8_gate(*paired(100, b=10, c=2))
    # P(X >= 10), X ~ Bin(12, 1/2) = (C(12,10) + C(12,11) + C(12,12)) / 2^12 = (66 + 12 + 1) / 4096
    assert g["p_value"] == pytest.approx(79 / 4096)
    assert g["accuracy_drop_pts"] == pytest.approx(8.0)
    assert not g["passed"] and "significant" in g["reason"] and "b=10" in g["reason"]
    assert g["accuracy_drop_upper95_pts"] > g["accuracy_drop_pts"]


def test_boundary_cases_of_the_rule():
    # 5 broken, 0 fixed: p = 1/32 = 0.03125 < 0.05 and drop 5 > 0.5 -> fails
    g = int8_gate(*paired(100, b=5, c=0))
    assert g["p_value"] == pytest.approx(1 / 32) and not g["passed"]
    # 4 broken, 1 fixed: p = (C(5,4) + C(5,5)) / 32 = 6/32 -> passes although the drop is 3 points
    g = int8_gate(*paired(100, b=4, c=1))
    assert g["p_value"] == pytest.approx(6 / 32) and g["passed"]
    # a significant but tolerable drop on a large test set passes: 0.2 points <= 0.5
    g = int8_gate(*paired(10_000, b=30, c=10))
    assert g["p_value"] < 0.01 and g["accuracy_drop_pts"] == pytest.approx(0.2) and g["passed"]
    assert "tolerance" in g["reason"]
    # the same counts on 1,000 texts: a 2-point significant drop fails
    assert not int8_gate(*paired(1_000, b=30, c=10))["passed"]
    # texts both models get wrong (even with different labels) are not discordant
    g = int8_gate(*paired(100, b=1, c=0, both_wrong=7))
    assert (g["b"], g["c"], g["both_wrong"]) == (1, 0, 7) and g["agreement_pct"] == pytest.approx(92.0)


def test_tolerance_and_alpha_are_the_stated_targets():
    assert TARGETS["int8_accuracy_drop_tolerance_pts"] == 0.5 and TARGETS["int8_alpha"] == 0.05
    ref, q, y = paired(100, b=5, c=0)
    assert int8_gate(ref, q, y, alpha=0.01)["passed"]  # p = 0.031 does not reject at 1%
    assert int8_gate(ref, q, y, tolerance_pts=6.0)["passed"]


def test_binomial_tail_matches_the_exact_sum():
    for n in (0, 1, 7, 20):
        for k in range(0, n + 2):
            exact = sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n if k <= n else 0.0
            assert binomial_upper_tail(k, n) == pytest.approx(exact if k > 0 else 1.0), (k, n)


def test_upper_bound_of_the_drop():
    # large samples: close to the Wald bound D + 1.645 sqrt(((b+c)/n - D^2) / n)
    a, b, c, d = 9000, 300, 200, 500
    n = a + b + c + d
    D = (b - c) / n
    wald = D + 1.6449 * math.sqrt(((b + c) / n - D * D) / n)
    assert paired_drop_upper_bound(a, b, c, d) == pytest.approx(wald, rel=0.02)
    # never below the observed drop, larger with fewer texts, and inside [-1, 1]
    assert paired_drop_upper_bound(99, 1, 0, 0) > 0.01
    assert paired_drop_upper_bound(90, 10, 0, 0) > paired_drop_upper_bound(900, 100, 0, 0) > 0.1
    assert -1 <= paired_drop_upper_bound(0, 0, 5, 0) <= 1


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="labels"):
        int8_gate([0, 1], [0, 1], [0])
