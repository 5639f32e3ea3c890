"""The MT-BERT ablation (Wu et al., Findings of ACL 2021, Fig. 5 and Fig. 4) over one job file.

``distill ablate --config JOB --out DIR`` runs the job once as given (``DIR/full``: its MT-BERT student and
its baselines, e.g. ``nokd``), then once per variant with one MT-BERT setting changed and no baselines
(``DIR/<variant>``). Every run uses the same split, the same co-finetuned teachers and the same
teacher-output cache (one teacher store: the job's ``teacher_store``, or ``DIR/teachers``), so the rows
differ only in the student's loss. Each run is resumable (``--resume`` is passed when its ``state.json``
exists), so a killed ablation continues where it stopped.

The variants (MT-BERT eq. (3): ``L = w_hid L_hid + w_kd L_dis + w_task L_task``):

====================  =====================================  ======================================
variant               setting                                paper
====================  =====================================  ======================================
``no_hidden``         ``mtbert.w_hid=0``                      Fig. 5 "w/o L_hid" (eq. (1) off)
``no_distill``        ``mtbert.w_kd=0``                       Fig. 5 "w/o L_dis" (eq. (2) off)
``no_task``           ``mtbert.w_task=0``                     Fig. 5 "w/o L_task"
``no_weighting``      ``mtbert.loss_weighting=false``         Fig. 4 "w/o loss weighting" (eq. (2))
``t1`` / ``t2`` /     ``mtbert.temperature=1 / 2 / 4``        temperature t of eq. (2) (paper: 1)
``t4``
====================  =====================================  ======================================

"full" is the paper's loss: every run gets ``--set mtbert.preset=paper`` (w_hid = w_kd = w_task = 1, t = 1,
loss weighting; distill's own default has w_hid = 0), and the job's own ``mtbert`` settings override it
(a job that names its own ``preset`` gets none added). A variant whose setting equals the full run's (e.g.
``t1``) is not trained again: its row is the full run's, marked "= full".

Output: ``DIR/ABLATION.md`` (dev and test macro-F1 in %, mean ± sample std over the job's seeds, and
the change against the full student and against ``nokd``) and ``DIR/ablation.json``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from distill.config import RunConfig, load_job_file
from distill.errors import DistillError
from distill.guards import paired_difference
from distill.report import pm
from distill.runio import atomic_write_json, atomic_write_text
from distill.strategies import resolve_settings

log = logging.getLogger("distill.ablate")

#: variant name -> (MT-BERT setting field, value, label in the table)
VARIANTS: dict[str, tuple[str, object, str]] = {
    "no_hidden": ("w_hid", 0.0, "w/o hidden loss (w_hid = 0)"),
    "no_distill": ("w_kd", 0.0, "w/o distillation loss (w_kd = 0)"),
    "no_task": ("w_task", 0.0, "w/o task loss (w_task = 0)"),
    "no_weighting": ("loss_weighting", False, "w/o loss weighting (eq. (2))"),
    "t1": ("temperature", 1.0, "temperature 1"),
    "t2": ("temperature", 2.0, "temperature 2"),
    "t4": ("temperature", 4.0, "temperature 4"),
}


def _job(config: Path) -> RunConfig:
    """The job file's config with defaults filled in (flags after the options are not parsed here: they go
    to every run, and each run validates them)."""
    cfg = RunConfig(**load_job_file(config))
    if cfg.strategy != "mtbert":
        raise DistillError(f"{config}: strategy is '{cfg.strategy}'; the ablation changes MT-BERT's losses, so the "
                           "job's `strategy` must be mtbert (baselines may be anything).")
    return cfg


def plan(config: Path, out: Path, variants: list[str], extra: list[str]) -> list[dict]:
    """The runs of the ablation: ``[{"name", "label", "out", "same_as_full": bool, "cmd": [...]}]``.

    Raises:
        DistillError: unknown variant name, or a job whose strategy is not mtbert.
    """
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise DistillError(f"--variants: unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}.")
    cfg = _job(config)
    own = dict(cfg.settings.get("mtbert") or {})
    paper = [] if "preset" in own else ["--set", "mtbert.preset=paper"]
    base = resolve_settings("mtbert", {"preset": "paper", **own})
    store = [] if cfg.teacher_store or any(a.startswith("--teacher-store") for a in extra) else \
        ["--teacher-store", str(out / "teachers")]
    runs = [{"name": "full", "label": "full (paper settings)" if paper else "full (the job as given)",
             "out": out / "full", "same_as_full": False, "args": list(paper)}]
    for v in variants:
        field, value, label = VARIANTS[v]
        runs.append({"name": v, "label": label, "out": out / v, "same_as_full": getattr(base, field) == value,
                     "args": ["--baselines", "", *paper, "--set", f"mtbert.{field}={str(value).lower()}"]})
    for r in runs:
        r["cmd"] = [sys.executable, "-m", "distill.cli", "run", "--config", str(config), "--out", str(r["out"]),
                    *store, *r.pop("args"), *extra] + (["--resume"] if (r["out"] / "state.json").is_file() else [])
    return runs


def _stats(report: dict, strategy: str) -> dict | None:
    s = report.get("strategies", {}).get(strategy)
    if s is None:
        return None
    return {part: {k: s[part]["macro_f1"][k] for k in ("mean", "std", "values")} for part in ("dev", "test")}


def collect(runs: list[dict]) -> dict:
    """Read every finished run's ``report.json``: per row dev/test macro-F1 (mean, std, values), and deltas.

    Raises:
        DistillError: the full run has no report (the ablation has not run).
    """
    full_report = runs[0]["out"] / "report.json"
    if not full_report.is_file():
        raise DistillError(f"{full_report}: missing; run the ablation first (`distill ablate` without --table-only).")
    full = json.loads(full_report.read_text())
    rows = [{"name": "full", "label": runs[0]["label"], **_stats(full, "mtbert")}]
    for r in runs[1:]:
        if r["same_as_full"]:
            rows.append({**rows[0], "name": r["name"], "label": r["label"], "same_as_full": True})
            continue
        p = r["out"] / "report.json"
        st = _stats(json.loads(p.read_text()), "mtbert") if p.is_file() else None
        rows.append({"name": r["name"], "label": r["label"], **(st or {"missing": True})})
    nokd = _stats(full, "nokd")
    if nokd:
        rows.append({"name": "nokd", "label": "no-KD student (reference)", **nokd})
    for row in rows:
        if "test" in row:
            for ref_name, ref in (("full", rows[0]), ("nokd", nokd)):
                if ref is None:
                    continue
                paired = {p: paired_difference(row[p]["values"], ref[p]["values"]) for p in ("dev", "test")}
                row[f"delta_{ref_name}"] = {p: paired[p]["mean"] for p in paired}
                row[f"se_{ref_name}"] = {p: paired[p]["se"] for p in paired}
    active = (full.get("teacher_selection") or {}).get("active", range(len(full["teachers"])))
    teachers = [{"name": t["name"], "dev": t["dev"]["macro_f1"], "test": t["test"]["macro_f1"], "active": i in active}
                for i, t in enumerate(full["teachers"])]
    return {"rows": rows, "teachers": teachers, "seeds": len(rows[0]["test"]["values"]),
            "decisions": full.get("decisions", []), "data": full.get("data")}


def _delta(row: dict, ref: str) -> str:
    """``"+0.59 (0.12) / +0.65 (0.30)"``: the seed-paired change (dev / test) with its standard error in brackets;
    ``-`` for the reference row itself."""
    if row["name"] == ref or (ref == "full" and row.get("same_as_full")):
        return "-"
    d, se = row[f"delta_{ref}"], row.get(f"se_{ref}")
    return " / ".join(f"{d[p]:+.2f}" + (f" ({se[p]:.2f})" if se and len(row[p]["values"]) > 1 else "")
                      for p in ("dev", "test"))


def render(res: dict, title: str) -> str:
    """The ablation table as markdown: macro-F1 %, mean ± sample std over seeds, every seed's dev / test, and each
    row's change against the full and the no-KD student paired by seed (standard error of the per-seed
    differences in brackets)."""
    has_nokd = any(r["name"] == "nokd" for r in res["rows"])
    head = ("| variant | dev macro-F1 | test macro-F1 | per seed, dev / test | Δ full (dev / test) |"
            + (" Δ nokd (dev / test) |" if has_nokd else ""))
    L = [f"# MT-BERT ablation: {title}", "",
         f"Macro-F1 in %, mean ± sample std over {res['seeds']} seed(s); every row has the same split, teachers and "
         "teacher-output cache.", "", "Teachers (dev / test macro-F1): " +
         "; ".join(f"{Path(t['name']).name} {t['dev']:.2f} / {t['test']:.2f}{'' if t['active'] else ' (left out)'}"
                   for t in res["teachers"]), "",
         head, "|---|---:|---:|---|---:|" + ("---:|" if has_nokd else "")]
    for r in res["rows"]:
        if r.get("missing"):
            L.append(f"| {r['label']} | not run | | | |" + (" |" if has_nokd else ""))
            continue
        seeds = ", ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(r["dev"]["values"], r["test"]["values"]))
        line = (f"| {r['label']}{' (= full)' if r.get('same_as_full') else ''} | {pm(r['dev'])} | {pm(r['test'])} | "
                f"{seeds} | {_delta(r, 'full')} |")
        if has_nokd:
            line += f" {_delta(r, 'nokd')} |"
        L.append(line)
    L += ["", "Δ: mean of the per-seed differences (seed k of every row has the same initialisation and batch "
              "order); in brackets their standard error, sd / sqrt(seeds)."]
    return "\n".join(L) + "\n"


def run_ablation(config: Path, out: Path, variants: list[str], extra: list[str], table_only: bool = False) -> dict:
    """Run (or resume) every row of the ablation, then write ``out/ABLATION.md`` and ``out/ablation.json``.

    Raises:
        DistillError: a bad job file or variant, or a run that failed (its command and exit code are named).
    """
    runs = plan(config, out, variants, extra)
    if not table_only:
        out.mkdir(parents=True, exist_ok=True)
        for r in runs:
            if r["same_as_full"]:
                log.info("ablation %s: same setting as the full job, not trained again", r["name"])
                continue
            log.info("ablation %s: %s", r["name"], " ".join(r["cmd"][2:]))
            rc = subprocess.call(r["cmd"])
            if rc != 0:
                raise DistillError(f"ablation run '{r['name']}' failed (exit {rc}): {' '.join(r['cmd'])}. Fix the cause "
                                   "and run the same `distill ablate` again: finished runs are kept and resumed.")
    res = collect(runs)
    res["config"], res["commands"] = str(config), {r["name"]: r["cmd"] for r in runs}
    atomic_write_json(out / "ablation.json", res)
    atomic_write_text(out / "ABLATION.md", render(res, str(config)))
    return res
