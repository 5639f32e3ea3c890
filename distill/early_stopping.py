"""Early stopping on a dev score, with the best epoch's weights kept (teachers and students).

Used by co-finetuning (``--teacher-patience`` / ``--teacher-time-budget``, score: the teachers' mean
dev macro-F1) and by :func:`distill.trainer.fit` for every student (``--student-patience``, score: the
student's dev macro-F1). The test part is never scored.
"""

from __future__ import annotations

from typing import Callable

from torch import nn


class BestEpoch:
    """Tracks the best epoch of a dev score (higher is better) and decides when to stop.

    Args:
        patience: stop once the score has not improved for this many epochs (None = never for this reason).
        budget_s: stop once the training time given to :meth:`update` reaches this many seconds
            (checked after each epoch; None = no budget).
        score: ``callable() -> float`` that scores the model on dev (what :func:`distill.trainer.fit`
            calls after each epoch); None when the owner scores itself.

    Attributes:
        best_f1: the best score so far (macro-F1 %, -1 before the first epoch).
        best_epoch: the epoch (1-based) that reached it (0 before the first epoch).
        bad: epochs since the last improvement.
        best_state: a CPU copy of the model's ``state_dict`` at the best epoch.
    """

    def __init__(self, patience: int | None = None, budget_s: float | None = None,
                 score: Callable[[], float] | None = None):
        self.patience, self.budget_s, self.score = patience, budget_s, score
        self.best_f1, self.best_epoch, self.bad, self.best_state = -1.0, 0, 0, None

    def update(self, score: float, epoch: int, model: nn.Module, elapsed_s: float | None = None) -> str | None:
        """Record epoch ``epoch``'s dev ``score`` (copying the weights when it is the best so far).

        Returns:
            Why training should stop now ("no dev improvement for N epoch(s)", "time budget S s reached"),
            or None to go on.
        """
        if score > self.best_f1:
            self.best_f1, self.best_epoch, self.bad = score, epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad += 1
        if self.patience is not None and self.bad >= self.patience:
            return f"no dev improvement for {self.bad} epoch(s)"
        if self.budget_s is not None and elapsed_s is not None and elapsed_s >= self.budget_s:
            return f"time budget {self.budget_s:g} s reached"
        return None

    def restore(self, model: nn.Module) -> int | None:
        """Load the best epoch's weights into ``model``; returns that epoch (None before any epoch)."""
        if self.best_state is None:
            return None
        model.load_state_dict(self.best_state)
        return self.best_epoch

    def state(self) -> dict:
        """What a checkpoint keeps (so ``--resume`` continues exactly)."""
        return {"best_f1": self.best_f1, "best_epoch": self.best_epoch, "bad": self.bad, "best_state": self.best_state}

    def load(self, state: dict) -> None:
        """Restore :meth:`state`."""
        self.best_f1, self.best_epoch, self.bad = state["best_f1"], state["best_epoch"], state["bad"]
        self.best_state = state["best_state"]
