"""The export's parity proof: how close ONNX fp32 and INT8 are to the PyTorch student on the test split.

Two checks (targets in :data:`TARGETS`, stated in every manifest as ``parity["rule"]``):

* **fp32** (deterministic, absolute): max |logit difference| between ONNX fp32 and PyTorch <= 1e-4.
* **INT8** (a paired statistical gate, :func:`int8_gate`): on the ``n`` test texts let ``b`` be the
  texts that fp32 (PyTorch) classifies right and INT8 wrong, ``c`` the reverse. The observed accuracy
  drop is ``(b - c) / n`` (in points). The gate FAILS only when the drop exceeds the tolerance (0.5
  points) AND a one-sided exact McNemar test rejects "INT8 is no worse" at alpha = 0.05: under that
  null hypothesis each discordant text is equally likely to go either way, so ``b ~ Binomial(b + c,
  1/2)`` and ``p = P(X >= b)``. An improvement (``c >= b``) never fails. On a small test set a single
  changed prediction (e.g. 1 of 100 texts: drop 1 point, p = 0.5) therefore passes, while a drop
  the data actually supports fails.

Reported but not gated: prediction agreement (%), the macro-F1 difference (on small test sets one
text moves macro-F1 by more than any sensible tolerance, and it has no exact paired test), the
max |logit difference| of INT8, and a one-sided 95% upper confidence bound on the accuracy drop
(Newcombe's hybrid score interval for a difference of paired proportions, 1998, method 10).

Pure functions of numpy arrays: nothing here runs a model.
"""

from __future__ import annotations

import math

import numpy as np

#: Parity targets: fp32 logits (absolute); INT8 accuracy-drop tolerance (points) and test level.
TARGETS = {
    "fp32_max_abs_logit_diff": 1e-4,
    "int8_accuracy_drop_tolerance_pts": 0.5,
    "int8_alpha": 0.05,
}

RULE = ("fp32: max |logit diff| vs PyTorch <= {fp32_max_abs_logit_diff:g}. INT8: with b = test texts fp32 "
        "gets right and INT8 wrong, c = the reverse, n = test texts, the gate fails only when the accuracy drop "
        "100*(b-c)/n exceeds {int8_accuracy_drop_tolerance_pts:g} points AND the one-sided exact McNemar test "
        "(b ~ Binomial(b+c, 1/2) under 'INT8 no worse', p = P(X >= b)) rejects at alpha = {int8_alpha:g}; c >= b "
        "never fails. Agreement, macro-F1 difference and the 95% upper bound of the drop (Newcombe) are reported, "
        "not gated.")


def rule_text(targets: dict | None = None) -> str:
    """The parity rule in one paragraph, with the ``targets`` (default :data:`TARGETS`) filled in."""
    return RULE.format(**(targets or TARGETS))


def binomial_upper_tail(k: int, n: int) -> float:
    """Exact ``P(X >= k)`` for ``X ~ Binomial(n, 1/2)`` (1.0 when ``k <= 0``; 0.0 when ``k > n``).

    Uses ``scipy.stats.binomtest(k, n, 0.5, alternative="greater")`` when scipy is installed,
    else the exact sum ``sum_{i>=k} C(n, i) / 2^n``.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    try:
        from scipy.stats import binomtest
    except ImportError:  # pragma: no cover - scipy is a dependency of scikit-learn
        return float(sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n)
    return float(binomtest(k, n, 0.5, alternative="greater").pvalue)


def _wilson(x: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion ``x / n`` at normal quantile ``z``."""
    if n == 0:
        return 0.0, 1.0
    p = x / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def paired_drop_upper_bound(a: int, b: int, c: int, d: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of ``p1 - p2`` for paired binary outcomes (Newcombe 1998, method 10).

    Args:
        a: both right; b: first right, second wrong; c: first wrong, second right; d: both wrong.
        confidence: one-sided level (0.95 uses Wilson limits at z = 1.645).

    Returns:
        the bound as a fraction in [-1, 1] (``p1 = (a+b)/n``, ``p2 = (a+c)/n``); 0.0 for n = 0.
    """
    n = a + b + c + d
    if n == 0:
        return 0.0
    from statistics import NormalDist

    z = NormalDist().inv_cdf(confidence)
    p1, p2 = (a + b) / n, (a + c) / n
    u1 = _wilson(a + b, n, z)[1]
    l2 = _wilson(a + c, n, z)[0]
    marg = (a + b) * (c + d) * (a + c) * (b + d)
    num = a * d - b * c
    if num > 0:
        num = max(num - n / 2, 0.0)
    phi = num / math.sqrt(marg) if marg else 0.0
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return min(1.0, (p1 - p2) + eps)


def int8_gate(ref_pred, int8_pred, labels, tolerance_pts: float | None = None, alpha: float | None = None) -> dict:
    """The INT8 parity gate (see the module docstring) on paired predictions.

    Args:
        ref_pred: (n,) class ids of the fp32 reference (PyTorch).
        int8_pred: (n,) class ids of the INT8 model, same texts and order.
        labels: (n,) gold class ids.
        tolerance_pts: accuracy-drop tolerance in points (default ``TARGETS``, 0.5).
        alpha: one-sided test level (default ``TARGETS``, 0.05).

    Returns:
        ``{"n", "b", "c", "both_right", "both_wrong", "agreement_pct", "accuracy_drop_pts",
        "accuracy_drop_upper95_pts", "p_value", "tolerance_pts", "alpha", "passed", "reason"}``;
        drops in percentage points (positive = INT8 worse), ``p_value`` of the one-sided exact test.

    Raises:
        ValueError: the three arrays differ in length.
    """
    tol = TARGETS["int8_accuracy_drop_tolerance_pts"] if tolerance_pts is None else float(tolerance_pts)
    alpha = TARGETS["int8_alpha"] if alpha is None else float(alpha)
    r, q, y = (np.asarray(x).reshape(-1) for x in (ref_pred, int8_pred, labels))
    if not (len(r) == len(q) == len(y)):
        raise ValueError(f"int8_gate: {len(r)} fp32, {len(q)} INT8 predictions and {len(y)} labels")
    n = len(y)
    r_ok, q_ok = r == y, q == y
    a, b = int((r_ok & q_ok).sum()), int((r_ok & ~q_ok).sum())
    c, d = int((~r_ok & q_ok).sum()), int((~r_ok & ~q_ok).sum())
    drop = 100.0 * (b - c) / n if n else 0.0
    p = binomial_upper_tail(b, b + c)
    upper = 100.0 * paired_drop_upper_bound(a, b, c, d)
    agree = 100.0 * float((r == q).mean()) if n else 100.0
    if n == 0:
        passed, reason = True, "no test texts: nothing to compare"
    elif c >= b:
        passed, reason = True, f"INT8 no worse: {c} texts fixed >= {b} broken (drop {drop:+.2f} points)"
    elif drop <= tol:
        passed, reason = True, f"accuracy drop {drop:.2f} points <= tolerance {tol:g} ({b} broken, {c} fixed)"
    elif p >= alpha:
        passed, reason = True, (f"accuracy drop {drop:.2f} points > {tol:g} but not significant: one-sided exact "
                                f"McNemar p = {p:.3g} >= {alpha:g} (b={b}, c={c}, n={n})")
    else:
        passed, reason = False, (f"INT8 accuracy drop {drop:.2f} points > {tol:g} and significant: one-sided exact "
                                 f"McNemar p = {p:.3g} < {alpha:g} (b={b} broken, c={c} fixed, n={n})")
    return {"n": n, "b": b, "c": c, "both_right": a, "both_wrong": d, "agreement_pct": agree,
            "accuracy_drop_pts": drop, "accuracy_drop_upper95_pts": upper, "p_value": p,
            "tolerance_pts": tol, "alpha": alpha, "passed": passed, "reason": reason}


def compare(ref: np.ndarray, got: np.ndarray, labels: list[int], num_labels: int) -> dict:
    """Logit and metric differences of ``got`` against ``ref`` (both (n, C) logits).

    Returns:
        ``{"max_abs_logit_diff", "agreement_pct", "accuracy_diff_pts", "macro_f1_diff_pts", "metrics"}``;
        differences are ``got - ref`` in percentage points, ``metrics`` those of ``got``.
    """
    from distill.metrics import classification_metrics

    mr, mg = classification_metrics(ref, labels, num_labels), classification_metrics(got, labels, num_labels)
    return {"max_abs_logit_diff": float(np.abs(ref - got).max()) if len(ref) else 0.0,
            "agreement_pct": 100.0 * float((ref.argmax(-1) == got.argmax(-1)).mean()) if len(ref) else 100.0,
            "accuracy_diff_pts": mg["accuracy"] - mr["accuracy"],
            "macro_f1_diff_pts": mg["macro_f1"] - mr["macro_f1"], "metrics": mg}


def fp32_failures(c: dict) -> list[str]:
    """The fp32 check's failure message (empty when met) for a :func:`compare` result."""
    t = TARGETS["fp32_max_abs_logit_diff"]
    return [f"fp32 max |logit diff| {c['max_abs_logit_diff']:.2e} > {t:.0e}"] if c["max_abs_logit_diff"] > t else []
