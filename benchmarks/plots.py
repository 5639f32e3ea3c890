"""PNG plots of the benchmark results (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"ensemble": "tab:red", "student": "tab:blue", "onnx_fp32": "tab:green", "onnx_int8": "tab:purple"}


def _color(name: str) -> str:
    if name.startswith("teacher_"):
        return "tab:orange"
    if name.startswith("ref_"):
        return "tab:brown"
    if "/" in name:  # another run's student (``--student-run``)
        return "tab:cyan"
    return COLORS.get(name, "tab:gray")


def _scatter(variants, x_of, xlabel, title, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    markers = "osD^v<>PX*h"
    for k, v in enumerate(variants):
        x = x_of(v)
        if x is None:
            continue
        y = v["test"]["accuracy"]
        # points often share an accuracy (same student, other runtime): distinct markers + a legend
        ax.scatter([x], [y], s=60, color=_color(v["name"]), marker=markers[k % len(markers)], zorder=3,
                   label=v["label"], alpha=0.85)
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_plots(results: dict, out: Path) -> list[str]:
    """Write the plots that the results allow into ``out``; returns the file names.

    * ``accuracy_vs_latency.png``: test accuracy vs p50 latency (ms) at batch 1, one point per variant;
    * ``accuracy_vs_size.png``: test accuracy vs file size (MB);
    * ``latency_vs_batch.png``: p50 latency (ms per batch) vs batch size, one line per variant;
    * ``training_throughput.png``: training samples/s of the step-capped measurements (and TextBrewer).
    """
    files = []
    inf = results.get("inference") or {}
    variants = inf.get("variants") or []
    if variants:
        b1 = str(min(int(b) for b in variants[0]["latency"]))
        _scatter(variants, lambda v: v["latency"].get(b1, {}).get("p50_ms"), f"p50 latency at batch {b1} (ms, log scale)",
                 f"Accuracy vs latency (batch {b1}, {inf['settings']['seq_len']} tokens, {results['machine']['cpu']})",
                 out / "accuracy_vs_latency.png")
        _scatter(variants, lambda v: v.get("size_mb"), "model file size (MB, log scale)", "Accuracy vs size",
                 out / "accuracy_vs_size.png")
        files += ["accuracy_vs_latency.png", "accuracy_vs_size.png"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        markers = "osD^v<>"
        all_bs = set()
        for k, v in enumerate(variants):
            bs = sorted(int(b) for b in v["latency"])
            all_bs.update(bs)
            ax.plot(bs, [v["latency"][str(b)]["p50_ms"] for b in bs], marker=markers[k % len(markers)],
                    color=_color(v["name"]), label=v["label"],
                    linestyle="--" if v["name"].startswith("teacher_") else "-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_bs))
        ax.set_xticklabels([str(b) for b in sorted(all_bs)])
        ax.set_yscale("log")
        ax.set_xlabel("batch size (texts)")
        ax.set_ylabel("p50 latency per batch (ms, log scale)")
        ax.set_title(f"Latency vs batch size ({inf['settings']['seq_len']} tokens per text)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "latency_vs_batch.png", dpi=120)
        plt.close(fig)
        files.append("latency_vs_batch.png")
    tr = results.get("training") or {}
    bars = [(k, v["samples_per_s"]) for k, v in (tr.get("fresh") or {}).items()]
    tb = tr.get("textbrewer") or {}
    if not tb.get("skipped", True):
        bars.append(("textbrewer (online)", tb["textbrewer"]["samples_per_s"]))
    if bars:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [b[0].replace("_", " ") for b in bars]
        vals = [b[1] for b in bars]
        colors = ["tab:purple" if n.startswith("textbrewer") else "tab:gray" if n == "nokd"
                  else "tab:blue" if "cache" in n else "tab:orange" for n in names]
        ax.bar(names, vals, color=colors)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("training samples/s")
        ax.set_title(f"Training throughput ({tr.get('steps')} steps, batch {tr.get('batch_size')}, {tr.get('device')})",
                     fontsize=10)
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "training_throughput.png", dpi=120)
        plt.close(fig)
        files.append("training_throughput.png")
    return files
