"""Tokenize once, pad per batch: the one tokenize-and-pad helper of the training side.

Every dataset row is tokenised once per tokenizer (truncated to ``max_length``); batches are padded
to their longest row (dynamic padding), which is what the student, the teachers, the cache and the
benchmarks all use.
"""

from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm


class Tokenized:
    """Token ids of every dataset row for one tokenizer (pre-tokenised once, padded per batch).

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: all dataset texts (row index = position).
        max_length: truncation length in tokens.

    Attributes:
        ids: one list of token ids per row (truncated to ``max_length``).
        pad_id: the tokenizer's padding id (0 when it has none).
    """

    def __init__(self, tokenizer, texts: list[str], max_length: int, batch: int = 1000):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ids: list[list[int]] = []
        for s in range(0, len(texts), batch):
            enc = tokenizer(texts[s:s + batch], truncation=True, max_length=max_length)
            self.ids.extend(enc["input_ids"])

    def batch(self, rows, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` (B, L_batch), int64, for the given row indices."""
        seqs = [self.ids[r] for r in rows]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for k, s in enumerate(seqs):
            ids[k, :len(s)] = torch.tensor(s)
            mask[k, :len(s)] = 1
        return ids.to(device), mask.to(device)

    def lengths(self, rows) -> list[int]:
        """Token counts of the given rows."""
        return [len(self.ids[r]) for r in rows]


def same_tokenization(a, b, probe: list[str]) -> bool:
    """True when two tokenizers share a vocabulary and give identical ids on the ``probe`` texts."""
    if a.get_vocab() != b.get_vocab():
        return False
    return a(probe, truncation=True, max_length=64)["input_ids"] == b(probe, truncation=True, max_length=64)["input_ids"]


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of positions grouped by length (less padding at inference)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def progress(iterable, desc: str, total: int | None = None, every_s: float = 30.0):
    """A tqdm progress bar on a terminal; elsewhere (a file, a CI log) no carriage-return bar but one log
    line ``desc: done/total (pct%), elapsed s`` every ``every_s`` seconds, so the log stays line-clean."""
    if sys.stderr.isatty():  # one bar per job: under a launcher, rank 0's
        from .distributed import world

        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=0.5,
                    disable=not world().main)
    return _logged(iterable, desc, total if total is not None else _len(iterable), every_s)


def _len(iterable) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None


def _logged(iterable, desc: str, total: int | None, every_s: float):
    import logging
    import time

    log = logging.getLogger("distill")
    t0 = last = time.perf_counter()
    for n, item in enumerate(iterable, 1):
        yield item
        now = time.perf_counter()
        if now - last >= every_s:
            last = now
            pct = f" ({100 * n / total:.0f}%)" if total else ""
            log.info("%s: %d/%s%s, %.0f s", desc, n, total if total is not None else "?", pct, now - t0)
