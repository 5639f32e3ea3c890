"""The transfer set: unlabelled in-domain texts that the teachers label for the student.

Knowledge distillation does not need gold labels, only texts the teachers can label (DistilBERT,
TinyBERT; SetFit's distillation guide). ``distill run`` takes them from

* ``--unlabeled PATH`` (repeatable: the files' texts are concatenated in the order given): a file in
  any format the data loaders read (CSV/TSV/JSONL with the run's ``--text-col``, a
  ``<label>/<file>.txt`` folder, the AG News CSV, MIND ``news.tsv``) or a ``.txt`` file with one text
  per line; a label column, if present, is ignored;
* ``--unlabeled-from-train N``: N texts of the training part that ``--train-cap`` left out of the
  labelled set, without their labels (for experiments; ``-1`` takes them all);
* ``--augment N``: N perturbed copies of every labelled and transfer text (:mod:`distill.augment`,
  Tang et al. 2019).

The teachers label the transfer set once (soft labels and the states a strategy needs, in the
teacher-output cache). Students of strategies that learn from teachers train on labelled and
transfer texts together: the task loss on the labelled ones only, the KD and hidden losses on both
(:data:`distill.losses.UNLABELED` marks a transfer text's label). A teacher weight that needs a gold
label uses the ensemble's prediction on transfer texts (:func:`distill.losses.pseudo_labels`).

Texts identical to a dev or test text (after collapsing whitespace) would leak held-out data into
training: a file containing one is refused; rows of the training part with such a text are skipped.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .augment import build_augmented
from .data import BUILTIN_DATASETS, TextDataset, _finish, detect_format, load_dataset, load_table
from .errors import DistillError
from .losses import UNLABELED
from .runio import fingerprint
from .split import Split

log = logging.getLogger("distill")


@dataclass
class TransferSet:
    """The unlabelled rows a run trains its students on (indices into the run's dataset).

    Attributes:
        rows: dataset rows of the transfer set (training-part rows first, then the files' texts).
        from_train: how many come from the training part (``--unlabeled-from-train``).
        files: ``{path: number of texts}`` of each ``--unlabeled`` file, in the order given.
        skipped_held_out: training-part texts skipped because dev or test holds the same text.
        copy_source: ``{augmented row: the row it is a copy of}`` (``--augment``; the copies are appended
            after the files' texts).
    """

    rows: list[int] = field(default_factory=list)
    from_train: int = 0
    files: dict[str, int] = field(default_factory=dict)
    skipped_held_out: int = 0
    copy_source: dict[int, int] = field(default_factory=dict)

    def key(self, ds: TextDataset) -> str | None:
        """Fingerprint of the transfer texts (None when empty): part of the teacher-output cache key."""
        return fingerprint([ds.texts[r] for r in self.rows]) if self.rows else None

    @property
    def augmented(self) -> int:
        """How many are augmented copies (``--augment``)."""
        return len(self.copy_source)

    @property
    def from_file(self) -> int:
        """How many texts come from the ``--unlabeled`` files."""
        return sum(self.files.values())

    def labelled_rows(self, ds: TextDataset) -> int:
        """Rows of ``ds`` that came from the labelled data file: :func:`build_transfer` appends the
        ``--unlabeled`` files' texts and then the augmented copies after them."""
        return len(ds) - self.from_file - self.augmented

    def describe(self) -> dict:
        """The record written to ``split.json`` and the report."""
        return {"texts": len(self.rows), "from_train": self.from_train, "from_file": self.from_file,
                "files": dict(self.files), "augmented": self.augmented,
                "skipped_held_out_duplicates": self.skipped_held_out}


def normalize(text: str) -> str:
    """The form two texts are compared in for the duplicate check: whitespace collapsed, case kept."""
    return " ".join(text.split())


def read_texts(path: str | Path, text_cols: Sequence[str] = ("text",), label_col: str | None = None,
               id_col: str | None = None, fmt: str = "auto") -> TextDataset:
    """Texts to label from ``path``, in any format :func:`distill.data.load_dataset` reads (a built-in
    dataset name too: ``bbc``, ``ag_news``, ``mind``), or a ``.txt`` file with one text per line
    (blank lines skipped; ids are line numbers).

    Labels are kept when ``label_col`` is given and the file has it (built-in formats always have
    them); otherwise every label is -1 and ``label_names`` is empty.

    Raises:
        DistillError: missing file, unknown text column, empty text (naming the row).
    """
    p = Path(path)
    builtin = not p.exists() and fmt == "auto" and str(path) in BUILTIN_DATASETS
    if not p.exists() and not builtin:
        raise DistillError(f"{p}: file not found. Give a CSV/TSV/JSONL file, a .txt file (one text per line), "
                           f"a folder of <label>/<file>.txt or a built-in dataset ({', '.join(BUILTIN_DATASETS)}).")
    if p.is_file() and (fmt == "lines" or (fmt == "auto" and p.suffix.lower() == ".txt")):
        ids, texts = [], []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                ids.append(str(n))
                texts.append(line)
        return _finish(ids, texts, None, source=str(p))
    if builtin:
        ds = load_dataset(str(path))
    else:
        kind = detect_format(p) if fmt == "auto" else fmt
        if kind in ("table", "csv", "tsv", "jsonl"):
            return load_table(p, text_cols=text_cols, label_col=label_col, id_col=id_col,
                              delimiter="\t" if kind == "tsv" else None, label_required=False)
        ds = load_dataset(str(p), kind, text_cols, label_col or "label", id_col)
    if label_col is None:
        ds.labels, ds.label_names = [UNLABELED] * len(ds), []
    return ds


def build_transfer(ds: TextDataset, split: Split, unlabeled: Sequence[str], from_train: int, text_cols: Sequence[str],
                   seed: int, augment: int = 0) -> tuple[TextDataset, TransferSet]:
    """The run's transfer set; the files' texts are appended to the dataset (label -1; ids
    ``unlabeled:<row id>``, ``unlabeled2:<row id>`` ... by file).

    Args:
        unlabeled: ``--unlabeled`` files (none, one or several).
        from_train: N training-part texts left out by ``--train-cap`` (seeded sample with ``seed``;
            -1 = all of them; 0 = none).
        augment: augmented copies per labelled and transfer text (:func:`distill.augment.build_augmented`;
            0 = none).

    Returns:
        ``(dataset, transfer set)``; the dataset is ``ds`` itself when no file is given.

    Raises:
        DistillError: ``--unlabeled-from-train`` larger than what ``--train-cap`` left out (or no cap),
            an unreadable file, a file given twice, or a file text that equals a dev/test text (naming
            the file and row).
    """
    ts = TransferSet()
    if not unlabeled and not from_train and not augment:
        return ds, ts
    held = {}
    for part in ("test", "dev"):
        for r in getattr(split, part):
            held[normalize(ds.texts[r])] = (part, r)
    if from_train:
        pool = [r for r in split.spare if normalize(ds.texts[r]) not in held]
        ts.skipped_held_out = len(split.spare) - len(pool)
        n = len(pool) if from_train == -1 else from_train
        if from_train < -1 or n > len(pool):
            why = (f"--train-cap {split.train_cap} leaves {len(pool)} training-part texts out of the labelled set"
                   if split.train_cap is not None else "without --train-cap every training-part text is labelled")
            raise DistillError(f"--unlabeled-from-train {from_train}: {why}. Use at most {len(pool)} (-1 takes them "
                               "all), or a smaller --train-cap.")
        ts.rows = sorted(random.Random(seed).sample(pool, n))
        ts.from_train = n
        if ts.skipped_held_out:
            log.info("transfer set: skipped %d training-part texts that also appear in dev/test", ts.skipped_held_out)
    for k, path in enumerate(unlabeled):
        if str(path) in ts.files:
            raise DistillError(f"--unlabeled {path}: given twice; give each file once.")
        u = read_texts(path, text_cols)
        clashes = [(u.ids[j], held[normalize(t)]) for j, t in enumerate(u.texts) if normalize(t) in held]
        if clashes:
            uid, (part, r) = clashes[0]
            raise DistillError(
                f"--unlabeled {path}: {len(clashes)} text(s) also appear in the {part} part of the data "
                f"(first: row {uid!r} = {part} row id {ds.ids[r]!r}). Training on them would leak held-out texts "
                "into the student; remove those rows from the file.")
        start, prefix = len(ds), "unlabeled" + (str(k + 1) if k else "")
        ds = TextDataset(ids=ds.ids + [f"{prefix}:{i}" for i in u.ids], texts=ds.texts + u.texts,
                         labels=ds.labels + [UNLABELED] * len(u), label_names=ds.label_names, source=ds.source,
                         meta=ds.meta)
        ts.rows += list(range(start, len(ds)))
        ts.files[str(path)] = len(u)
    if augment:
        ds, rows, src = build_augmented(ds, list(split.train) + ts.rows, set(held) | {normalize(t) for t in ds.texts},
                                        augment, seed)
        log.info("transfer set: %d augmented copies of %d texts (--augment %d)", len(rows),
                 len(split.train) + len(ts.rows), augment)
        ts.rows += rows
        ts.copy_source = dict(zip(rows, src))
    return ds, ts


def gold_copies(ts: TransferSet, labels: Sequence[int], labelled: Sequence[int]) -> tuple[list[int], list[int]]:
    """The augmented copies of labelled texts, with their source's gold label (EDA-style augmentation
    for a strategy that learns from gold labels only: ``--set nokd.augmented=true``).

    Args:
        labels: gold labels of every dataset row (``-1`` on transfer rows).
        labelled: the labelled training rows.

    Returns:
        ``(copy rows, labels)``: the copy rows (in dataset order) and ``labels`` with each copy set to
        its source's label.
    """
    keep = set(labelled)
    rows = [r for r, s in ts.copy_source.items() if s in keep]
    out = list(labels)
    for r in rows:
        out[r] = labels[ts.copy_source[r]]
    return rows, out


def masked_labels(ds: TextDataset, ts: TransferSet) -> list[int]:
    """The dataset's labels with every transfer row set to -1: what the student trainer may see."""
    labels = list(ds.labels)
    for r in ts.rows:
        labels[r] = UNLABELED
    return labels
