"""Print a markdown results table (mean ± std over seeds) from finished run folders.

Usage: python scripts/results_table.py RUN [RUN ...]

One row per (run, strategy): test accuracy and macro-F1, dev macro-F1, parameters, saved file MB
(the run's student folder; the nokd students are the same architecture), median epoch seconds,
the gain over the run's ``nokd`` student in macro-F1 points (test), "times smaller" (mean teacher
parameters / student parameters, paper 004's column) and the peak memory of the training (MB).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def pm(d: dict) -> str:
    return f"{d['mean']:.2f} ± {d['std']:.2f}" if len(d.get("values", [])) > 1 else f"{d['mean']:.2f}"


def rows(run: Path) -> list[str]:
    r = json.loads((run / "report.json").read_text())
    base = r["strategies"].get("nokd")
    out = []
    for name, s in r["strategies"].items():
        peak = f"{s['peak_memory_mb']:.0f}" if s.get("peak_memory_mb") else "-"
        gain = "-" if base is None or name == "nokd" else f"{s['test']['macro_f1']['mean'] - base['test']['macro_f1']['mean']:+.2f}"
        out.append(f"| {run.name} | {name} | {pm(s['test']['accuracy'])} | {pm(s['test']['macro_f1'])} | "
                   f"{pm(s['dev']['macro_f1'])} | {gain} | {r['student']['params'] / 1e6:.2f}M | "
                   f"{r['student'].get('file_mb', 0):.1f} | {statistics.median(s['epoch_seconds']['values']):.1f} | "
                   f"{r['compression']['mean_teacher_over_student']:.1f}x | {peak} |")
    t = [f"{Path(x['name']).name} {x['test']['macro_f1']:.2f}" for x in r["teachers"]]
    out.append(f"| {run.name} | teachers (test macro-F1) | | {', '.join(t)}; ensemble {r['ensemble']['test']['macro_f1']:.2f} "
               f"| | | {r['ensemble']['params'] / 1e6:.1f}M | {r['ensemble']['file_mb']:.0f} | | | |")
    return out


if __name__ == "__main__":
    print("| run | strategy | test acc | test macro-F1 | dev macro-F1 | vs nokd (test F1) | params | file MB | "
          "epoch s (median) | times smaller | peak MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a in sys.argv[1:]:
        print("\n".join(rows(Path(a))))
