"""Data augmentation for distillation: perturbed copies of the training texts that the teachers label.

Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", sec. 3.3)
enlarge a small transfer set with rule-based copies of each training text, label them with the teacher
and train the student on the teacher's outputs for them; TinyBERT (Jiao et al. 2020, sec. 3.1) does the
same with word replacement. Gold labels do not carry over to a perturbed text; the teachers' soft labels
do, so the copies are *transfer* texts: KD and hidden losses only, no task loss.

``--augment N`` makes N copies of every labelled and every transfer text. Per copy, each word
(whitespace token) is, with one uniform draw X:

* dropped when X < ``P_DROP`` (Tang et al.'s masking, p_mask = 0.1; the teachers here have different
  tokenizers and mask tokens, so the word is removed instead of replaced with ``[MASK]``);
* replaced with a word drawn from the training texts' unigram distribution when
  ``P_DROP <= X < P_DROP + P_REPLACE`` (Tang et al.'s POS-guided replacement, p_pos = 0.1, without a
  POS tagger: none is available offline);
* kept otherwise.

Then, with probability ``P_NGRAM`` (p_ng = 0.25), the copy is cut to a random n-gram of itself,
n uniform in 1..``MAX_NGRAM`` (5). A copy equal to its source, to another text of the run, or to a
dev/test text (after collapsing whitespace) is drawn again, up to ``RETRIES`` times, then left out.
The draws are seeded, so a run and its ``--resume`` build the same copies.
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import accumulate
from typing import Sequence

from .data import TextDataset
from .errors import DistillError
from .losses import UNLABELED

P_DROP = 0.1
P_REPLACE = 0.1
P_NGRAM = 0.25
MAX_NGRAM = 5
RETRIES = 5


def perturb(words: Sequence[str], rng: random.Random, vocab: Sequence[str], cum_weights: Sequence[int]) -> str:
    """One augmented copy of a text given as its words (Tang et al. 2019, Algorithm 1, as adapted above).

    Args:
        words: the source text split on whitespace.
        rng: the seeded generator (one per run).
        vocab, cum_weights: the unigram distribution replacement words are drawn from
            (``random.choices`` form: words and cumulative counts).

    Returns:
        The copy, words joined by single spaces (may be empty when every word was dropped).
    """
    out = []
    for w in words:
        x = rng.random()
        if x < P_DROP:
            continue
        out.append(rng.choices(vocab, cum_weights=cum_weights)[0] if x < P_DROP + P_REPLACE else w)
    if out and rng.random() < P_NGRAM:
        n = min(rng.randint(1, MAX_NGRAM), len(out))
        start = rng.randrange(len(out) - n + 1)
        out = out[start:start + n]
    return " ".join(out)


def build_augmented(ds: TextDataset, sources: Sequence[int], exclude: set[str], copies: int,
                    seed: int) -> tuple[TextDataset, list[int], list[int]]:
    """Append ``copies`` augmented copies of each ``sources`` row to the dataset, unlabelled.

    Args:
        ds: the run's dataset (labelled rows, then any ``--unlabeled`` files' texts).
        sources: rows to copy (the labelled training rows, then the transfer rows).
        exclude: texts a copy must not equal, whitespace-collapsed (the dev and test texts and the
            dataset's own; :func:`distill.transfer.normalize`): such a copy is drawn again. Copies are
            added to it as they are made.
        copies: copies per source text (``--augment``), >= 1.
        seed: the run's seed (the draws are seeded with it).

    Returns:
        ``(dataset with the copies appended (label -1, ids "augmented:<source id>:<k>"), their rows,
        the source row of each)``.

    Raises:
        DistillError: ``copies`` < 1 or no source text.
    """
    from .transfer import normalize  # transfer.py imports this module

    if copies < 1:
        raise DistillError(f"--augment {copies}: give the number of augmented copies per training text (>= 1), "
                           "or 0 / leave it out for none.")
    if not sources:
        raise DistillError("--augment: there is no training text to copy; check --train-cap and the data file.")
    counts = Counter(w for r in sources for w in ds.texts[r].split())
    vocab = sorted(counts)
    cum = list(accumulate(counts[w] for w in vocab))
    rng = random.Random(f"augment:{seed}")
    seen = set(exclude) | {normalize(ds.texts[r]) for r in sources}  # a copy never equals its source
    ids, texts, src = [], [], []
    for r in sources:
        words = ds.texts[r].split()
        for k in range(copies):
            for _ in range(RETRIES):
                text = perturb(words, rng, vocab, cum)
                if text and text not in seen:
                    seen.add(text)
                    ids.append(f"augmented:{ds.ids[r]}:{k}")
                    texts.append(text)
                    src.append(r)
                    break
    start = len(ds)
    ds = TextDataset(ids=ds.ids + ids, texts=ds.texts + texts, labels=ds.labels + [UNLABELED] * len(texts),
                     label_names=ds.label_names, source=ds.source, meta=ds.meta)
    return ds, list(range(start, len(ds))), src
