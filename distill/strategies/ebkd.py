"""``ebkd``: entropy-based per-sample teacher weights (Kwon et al., ICASSP 2020), one of paper 003's baselines."""

from __future__ import annotations

from ..weighting import entropy_weights
from .base import register
from .weighted import WeightedKD


@register("ebkd")
class EBKD(WeightedKD):
    """EBKD: the more confident teacher (lower prediction entropy) gets more weight, per sample.

    * Weights: ``w_k = (1 / (N - 1)) (1 - H_k / sum_j H_j)``, ``H_k`` the entropy of teacher k's
      softmax at T = 1 (:func:`distill.weighting.entropy_weights`), (N, B), detached.
    * Loss: ``(1 - alpha) CE(y, y_s) + alpha mean_b sum_k w_kb T^2 CE(softmax(z_k/T), softmax(z_s/T))``.

    Choices left open by the paper: weights normalised to sum to 1 (the CA-MKD reference code's
    ``1 - H_k / sum H`` sums to N - 1); entropy at T = 1, not at the KD temperature (as in that code).
    The gold label is not used by the weights (unlike CA-MKD's): a confidently wrong teacher still
    gets a large weight - that is the rule's known weakness.

    Shapes: student logits (B, C); teacher logits (N, B, C).
    """

    paper = ("Kwon et al., 'Adaptive Knowledge Distillation Based on Entropy', ICASSP 2020 "
             "(paper 003's EBKD baseline)")

    def weights(self, student, teachers, batch):
        return entropy_weights(teachers.logits)

    def describe(self):
        s = self.settings
        return f"EBKD: entropy per-sample weights; {1 - s.alpha:g}*L_s + {s.alpha:g}*L_KD(T={s.temperature})"
