"""Reading a finished run folder (config, split, labels) for export, serving checks and benchmarks, with
errors that name the missing or damaged file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

from .config import RunConfig
from .data import TextDataset, load_dataset
from .errors import DistillError


def read_run_json(run_dir: str | Path, name: str) -> dict:
    """``run_dir/name`` parsed as JSON.

    Raises:
        DistillError: the file is missing (not a run folder, or the run did not get that far) or does not
            parse (damaged), naming the file and the fix.
    """
    path = Path(run_dir) / name
    if not path.is_file():
        raise DistillError(f"{run_dir}: missing {name}; not a distill run folder, or the run stopped before writing "
                           f"it. Finish it with `distill run --out {run_dir} --resume`.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DistillError(f"{path}: damaged, not valid JSON ({e}). Restore it from a copy, or run the job again "
                           "into a new --out folder.") from None


def load_run_data(run_dir: str | Path) -> tuple[TextDataset, dict[str, list[int]], RunConfig]:
    """Reload a finished run's dataset and split (for export parity, serving checks and benchmarks).

    Returns:
        ``(dataset, {"train"|"dev"|"test": row indices}, config)``; the rows are those recorded in
        ``split.json`` (matched by id), so the result does not depend on re-running the split.

    Raises:
        DistillError: missing or damaged ``config.json``/``split.json``, or ids that no longer exist in the data.
    """
    run_dir = Path(run_dir)
    cfg = RunConfig.from_dict(read_run_json(run_dir, "config.json"))
    ds = load_dataset(cfg.data, cfg.data_format, cfg.text_cols, cfg.label_col, cfg.id_col, cfg.encoding)
    split = read_run_json(run_dir, "split.json")
    pos = {i: k for k, i in enumerate(ds.ids)}
    parts = {}
    for part, ids in split["ids"].items():
        missing = [i for i in ids if i not in pos]
        if missing:
            raise DistillError(f"{run_dir}/split.json: id {missing[0]!r} is not in {ds.source}; the data changed.")
        parts[part] = [pos[i] for i in ids]
    return ds, parts, cfg
