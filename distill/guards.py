"""Rules that keep distillation from making the student worse than not distilling (dev split only).

* **Weak-teacher rule** (:func:`select_teachers`): a teacher whose dev macro-F1 is more than
  ``--weak-teacher-margin`` points below the best teacher's is left out of distillation: its soft
  labels would pull the ensemble below the best teacher, and the student with it (seen on a held-out
  news dataset: a 92.1 teacher beside a 97.0 one made the MT-BERT student 0.9 below no KD). At least
  one teacher (the best) always stays. The margin is a prior, not tuned on any test split.
* **Student selection** (:func:`choose_student`): with ``--select-student dev`` and a ``nokd``
  baseline in the run, the run's saved student is the no-KD student unless the main strategy's dev
  macro-F1 gain over it, paired by seed, is at least one standard error of the per-seed differences
  (with one seed: unless the main strategy is not below); the report says which and why.

:func:`teacher_warnings` flags a teacher that scores below the no-KD student on dev.

Both rules write a sentence into the report, so a user reads what was done and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TeacherSelection:
    """Which teachers distill.

    Attributes:
        active: indices of the teachers whose signals the students learn from.
        dropped: ``{"index", "name", "dev_macro_f1", "best_dev_macro_f1", "gap"}`` per teacher left out.
        margin: the rule's margin (macro-F1 points), None when the rule is off.
        notes: one sentence per decision, for the log and the report.
    """

    active: list[int]
    dropped: list[dict] = field(default_factory=list)
    margin: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"active": self.active, "dropped": self.dropped, "margin": self.margin, "notes": self.notes}


def select_teachers(teacher_metrics: list[dict], margin: float | None) -> TeacherSelection:
    """Apply the weak-teacher rule to the finetuned teachers' dev macro-F1 (%).

    Args:
        teacher_metrics: per teacher ``{"name", "dev": {"macro_f1"}}`` (see ``teachers.teacher_report``).
        margin: points below the best teacher beyond which a teacher is dropped; None = keep all.
    """
    f1 = [t["dev"]["macro_f1"] for t in teacher_metrics]
    if margin is None or len(f1) < 2:
        return TeacherSelection(list(range(len(f1))), margin=margin)
    best = max(f1)
    sel = TeacherSelection([i for i, v in enumerate(f1) if best - v <= margin], margin=margin)
    for i, v in enumerate(f1):
        if i not in sel.active:
            name = teacher_metrics[i]["name"]
            sel.dropped.append({"index": i, "name": name, "dev_macro_f1": v, "best_dev_macro_f1": best,
                                "gap": best - v})
            sel.notes.append(f"teacher {name} was left out of distillation: its dev macro-F1 ({v:.2f}) is "
                             f"{best - v:.2f} points below the best teacher's ({best:.2f}), more than "
                             f"--weak-teacher-margin {margin:g}; its soft labels would pull the student down.")
    return sel


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Seed-paired difference of two metric lists (seed k of both has the same initialisation and batch order).

    Returns:
        ``{"mean": mean of d_k = a_k - b_k, "se": sd(d) / sqrt(n) (0 for one seed), "n": n}`` over the
        first ``n = min(len(a), len(b))`` seeds, in the units of ``a`` and ``b`` (e.g. macro-F1 points).
    """
    n = min(len(a), len(b))
    diff = np.asarray(a[:n], float) - np.asarray(b[:n], float)
    return {"mean": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0, "n": n}


def choose_student(summary_dev: dict[str, list[float]], main: str, rule: str) -> tuple[str, str | None]:
    """The strategy whose best-dev seed becomes the run's student.

    With ``rule="dev"`` the main strategy's student is kept only when dev shows that distilling pays:
    the seeds are paired (seed k of both strategies has the same initialisation and batch order) and the
    mean of the per-seed differences ``d_k = F1_main,k - F1_nokd,k`` must be at least one standard error
    ``sd(d) / sqrt(n)`` of those differences. With one seed (no standard error) the rule is ``d >= 0``.
    The margin keeps a dev gain smaller than the seed noise from shipping a distilled student that
    is not better (on the 201-text MIND dev split the per-seed differences spread by about 2 points).

    Args:
        summary_dev: per strategy, the dev macro-F1 (%) of each seed, in seed order.
        main: the run's ``--strategy``.
        rule: ``dev`` (the paired rule above) or ``strategy`` (always ``main``).

    Returns:
        ``(strategy, note)``; the note explains a switch to ``nokd`` (None otherwise).
    """
    if rule != "dev" or main == "nokd" or "nokd" not in summary_dev:
        return main, None
    d = paired_difference(summary_dev[main], summary_dev["nokd"])
    gain, se, n = d["mean"], d["se"], d["n"]
    if gain >= se:
        return main, None
    kd, base = float(np.mean(summary_dev[main][:n])), float(np.mean(summary_dev["nokd"][:n]))
    nd = 2 if f"{kd:.2f}" != f"{base:.2f}" else 4  # enough digits to show the gap
    if gain < 0:
        why = (f"the {main} student scored below the no-KD student on dev macro-F1 ({kd:.{nd}f} < {base:.{nd}f}, "
               f"a gap of {base - kd:.{nd}f} points, mean over {n} seed(s))")
    else:
        why = (f"the {main} student's dev macro-F1 gain over the no-KD student ({gain:+.2f} points, mean of the "
               f"per-seed differences; {kd:.2f} vs {base:.2f}) is smaller than its standard error over {n} seeds "
               f"({se:.2f}): dev does not show that distilling pays")
    return "nokd", (f"{why}, so the run's student is the no-KD student (--select-student dev); distilling from these "
                    "teachers did not pay on this data.")


def expand_weights(per_text: np.ndarray | None, active: list[int], n_teachers: int) -> np.ndarray | None:
    """Per-text teacher weights of the active teachers (n, len(active)) -> (n, n_teachers), 0 for the
    teachers left out, so the report's columns always name every teacher."""
    if per_text is None or len(active) == n_teachers:
        return per_text
    full = np.zeros((per_text.shape[0], n_teachers))
    full[:, active] = per_text
    full[np.isnan(per_text).any(1)] = np.nan
    return full


def teacher_warnings(teacher_metrics: list[dict], summary: dict) -> list[str]:
    """One warning per teacher whose dev macro-F1 is below the no-KD student's (mean over seeds): a
    teacher worse than the student trained alone has nothing to teach it (issue: make distillation pay).
    Uses dev only, never test; empty when the run has no ``nokd`` baseline."""
    if "nokd" not in summary:
        return []
    base = summary["nokd"]["dev"]["macro_f1"]["mean"]
    return [f"teacher {t['name']} scores below the no-KD student on dev macro-F1 ({t['dev']['macro_f1']:.2f} < "
            f"{base:.2f}): a teacher worse than the student trained alone has nothing to teach it; finetune it "
            "longer (--teacher-epochs, --teacher-train-layers 0) or drop it."
            for t in teacher_metrics if t["dev"]["macro_f1"] < base]
