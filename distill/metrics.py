"""Evaluation: logits of a classifier over dataset rows, accuracy and macro-F1."""

from __future__ import annotations

import numpy as np
import torch

from . import distributed as D
from .device import autocast_ctx
from .tokens import Tokenized, length_sorted_batches, progress


@torch.no_grad()
def predict_logits(model, tok: Tokenized, rows: list[int], device: str, batch_size: int,
                   precision: str = "fp32", desc: str = "predict") -> np.ndarray:
    """Logits (len(rows), C) float32 of an :class:`~distill.modeling.EncoderClassifier` on dataset ``rows``.

    Rows are batched by length (dynamic padding); the model is put in eval mode. Under a launcher the
    batches are shared out among the ranks and gathered (:mod:`distill.distributed`): every rank must
    call it, and every rank gets the logits of all rows, each computed in the batch one process uses.
    """
    model.eval()
    out = [None] * len(rows)
    batches = length_sorted_batches(tok.lengths(rows), batch_size)
    mine = {}
    for k, b in progress(D.my_batches(batches), desc):
        ids, mask = tok.batch([rows[i] for i in b], device)
        with autocast_ctx(device, precision):
            mine[k] = model(ids, mask).logits.float().cpu().numpy()
    for b, logits in zip(batches, D.gather_batches(mine, len(batches))):
        for k, i in enumerate(b):
            out[i] = logits[k]
    return np.stack(out) if out else np.zeros((0, model.head.classifier.out_features), np.float32)


def classification_metrics(logits_or_probs: np.ndarray, labels: list[int], num_labels: int) -> dict:
    """Accuracy and macro-F1 in percent (scikit-learn) over all ``num_labels`` classes, and ``n``.

    Args:
        logits_or_probs: (n, C); the prediction is the argmax.
        labels: n gold class ids.
    """
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.asarray(logits_or_probs).argmax(-1)
    y = np.asarray(labels)
    return {
        "accuracy": 100.0 * float(accuracy_score(y, pred)),
        "macro_f1": 100.0 * float(f1_score(y, pred, average="macro", labels=list(range(num_labels)), zero_division=0)),
        "n": int(len(y)),
    }


def softmax_np(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a (n, C) numpy array."""
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
