"""A seeded, stratified train/dev/test split (recorded in every run's ``split.json``)."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from .errors import DistillError


@dataclass
class Split:
    """Row indices of a train/dev/test split and how it was made (recorded in the run)."""

    train: list[int]
    dev: list[int]
    test: list[int]
    seed: int
    fractions: tuple[float, float, float]
    train_cap: int | None = None
    spare: list[int] = field(default_factory=list)  # training-part rows left out by train_cap

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}


def stratified_split(
    labels: Sequence[int],
    label_names: Sequence[str],
    seed: int = 13,
    dev_frac: float = 0.1,
    test_frac: float = 0.2,
    train_cap: int | None = None,
    min_per_class: int = 3,
) -> Split:
    """Seeded, stratified train/dev/test split.

    Each class is shuffled with ``seed`` and cut by the fractions (rounded, at least one row to
    every part). Classes with fewer than ``min_per_class`` (3) rows cannot appear in all three parts.

    Args:
        train_cap: keep at most this many training rows, sampled stratified (dev/test untouched); the
            rows left out are recorded in ``Split.spare`` (a transfer set may use their texts).

    Raises:
        DistillError: a label has too few examples for the split (names the label and the count).
    """
    if not (0 < dev_frac < 1 and 0 < test_frac < 1 and dev_frac + test_frac < 1):
        raise DistillError("--dev-frac and --test-frac must be in (0, 1) and sum to less than 1.")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    rare = [(label_names[c], len(ix)) for c, ix in sorted(by_class.items()) if len(ix) < min_per_class]
    if rare:
        desc = ", ".join(f"{n!r} ({k} rows)" for n, k in rare)
        raise DistillError(
            f"label(s) {desc} have fewer than {min_per_class} examples, too few for a train/dev/test "
            "split. Add examples, merge the label into another, or drop those rows."
        )
    rng = random.Random(seed)
    train, dev, test = [], [], []
    for c in sorted(by_class):
        ix = list(by_class[c])
        rng.shuffle(ix)
        n = len(ix)
        n_test = max(1, round(n * test_frac))
        n_dev = max(1, round(n * dev_frac))
        if n - n_test - n_dev < 1:
            n_test, n_dev = 1, 1
        test += ix[:n_test]
        dev += ix[n_test:n_test + n_dev]
        train += ix[n_test + n_dev:]
    spare: list[int] = []
    if train_cap is not None and train_cap < len(train):
        kept = _stratified_sample(train, labels, train_cap, rng)
        spare, train = sorted(set(train) - set(kept)), kept
    return Split(sorted(train), sorted(dev), sorted(test), seed, (1 - dev_frac - test_frac, dev_frac, test_frac),
                 train_cap, spare)


def _stratified_sample(ix: list[int], labels: Sequence[int], k: int, rng: random.Random) -> list[int]:
    """Sample ``k`` of ``ix`` keeping class proportions (largest remainder), at least 1 per class."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i in ix:
        by_class[labels[i]].append(i)
    total = len(ix)
    quota = {c: max(1, int(k * len(v) / total)) for c, v in by_class.items()}
    rest = k - sum(quota.values())
    order = sorted(by_class, key=lambda c: -(k * len(by_class[c]) / total - int(k * len(by_class[c]) / total)))
    for c in order:
        if rest <= 0:
            break
        if quota[c] < len(by_class[c]):
            quota[c] += 1
            rest -= 1
    out = []
    for c, v in sorted(by_class.items()):
        v = list(v)
        rng.shuffle(v)
        out += v[: quota[c]]
    return out


def quiz_split(train: list[int], labels: Sequence[int], size: int, seed: int, field: str) -> list[int]:
    """The quiz set of a teacher-updating method (MetaDistil, METHODS.md section 4): ``size`` rows of the
    training part, stratified and seeded (the same for every student seed), which that method's student
    does not train on. Never dev or test rows.

    Raises:
        DistillError: ``size`` leaves fewer than 2 training rows (names ``field``, the setting to change).
    """
    if size > len(train) - 2:
        raise DistillError(f"{field}={size}: the training part has only {len(train)} rows; the quiz set must leave "
                           f"at least 2 to train on. Give a smaller {field} or more training data.")
    return sorted(_stratified_sample(list(train), labels, size, random.Random(seed + 104729)))
