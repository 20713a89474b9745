"""The consolidation table and its bar chart: Base, In-Context, (the teacher in context,) each method's students as
mean ± standard deviation over training seeds and contexts, and instruction following beside them."""

from __future__ import annotations

import statistics
from pathlib import Path

from opcd.io import pyplot, save_figure

LABELS = {"offpolicy": "Off-policy CD", "opcd": "OPCD"}
COLORS = {"base": "#999", "offpolicy": "#e07b39", "opcd": "#c84c4c"}  # a method keeps its colour in both charts


def _scores(r: dict) -> list[tuple[str, list[float], str]]:
    """The table's score columns as (name, values over seeds, colour); the teacher's only where cross-size (and its
    score without a context only in results made since 2026-12-04)."""
    columns = [("Base", [r["base"]], COLORS["base"]), ("In-Context", r["in_context"], "#4a90d9")]
    if r.get("teacher_without") is not None:
        columns.append(("Teacher, no context", [r["teacher_without"]], "#b5d6a7"))
    if r["teacher_in_context"]:
        columns.append(("Teacher in-context", r["teacher_in_context"], "#7fb069"))
    return columns + [(LABELS[m], v, COLORS[m]) for m, v in r["students"].items()]


def _mean_std(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _seeds(r: dict) -> str:
    by_method = r.get("seeds_by_method") or {}
    if len({tuple(v) for v in by_method.values()}) > 1:
        return ", ".join(f"{LABELS[m]} {v}" for m, v in by_method.items())
    return str(r["seeds"])


def table(r: dict) -> str:
    metric = "accuracy" if r["task"] == "math" else "success"
    cols = [name for name, _, _ in _scores(r)]
    values = [_mean_std(v) for _, v, _ in _scores(r)]
    if r["ood"]:
        cols.append("OOD IF-Eval: Base / " + " / ".join(LABELS[m] for m in r["students"]))
        ood = [_mean_std(r["ood"][m]) if m in r["ood"] else "–" for m in r["students"]]
        values.append(" / ".join([f"{100 * r['ood']['base']:.1f}"] + ood))
    lines = [
        f"Task: {r['task']} ({metric} on {r['test']['n']} {r['test']['prompts']}); student {r['student']}, "
        f"experience extracted by {r['extracted_by']}, teacher {r['teacher']}; {r['selection']} context"
        f"{'s' if len(r['in_context']) > 1 else ''}; training seeds {_seeds(r)}"
        + (f"; checkpoint: {r['checkpoint']['rule']}." if "checkpoint" in r else "."),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        "| " + " | ".join(values) + " |",
        "",
    ]
    return "\n".join(lines)


def _bars(ax, names: list[str], series: list[list[float]], colors: list[str]) -> None:
    """Mean ± standard deviation (over seeds) of each series, in percent, on a 0-100 axis."""
    means = [100 * statistics.mean(v) for v in series]
    errs = [100 * statistics.stdev(v) if len(v) > 1 else 0 for v in series]
    ax.bar(names, means, yerr=errs, capsize=4, color=colors)
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", labelsize=8 if len(names) > 4 else 10)  # six bars' names fit side by side
    for x, (m, e) in enumerate(zip(means, errs, strict=True)):
        ax.text(x, m + e + 2, f"{m:.1f}", ha="center", fontsize=8)


def plot(r: dict, path: Path) -> None:
    """The table as bars (test score; instruction following beside it when measured)."""
    names, series, colors = zip(*_scores(r), strict=True)
    names = [name.replace(", ", ",\n").replace(" in-", "\nin-") for name in names]  # two lines under a bar
    ood = r.get("ood") or {}
    fig, axes = pyplot().subplots(1, 2 if ood else 1, figsize=(10, 3.8) if ood else (6.5, 3.8), squeeze=False)
    _bars(axes[0][0], names, list(series), list(colors))
    axes[0][0].set_ylabel(("accuracy" if r["task"] == "math" else "success") + " (%)")
    axes[0][0].set_title(f"{r['task']} test", fontsize=10)
    if ood:
        methods = [m for m in r["students"] if m in ood]
        _bars(
            axes[0][1],
            ["Base"] + [LABELS[m] for m in methods],
            [[ood["base"]]] + [ood[m] for m in methods],
            [COLORS["base"]] + [COLORS[m] for m in methods],
        )
        axes[0][1].set_ylabel("prompt-level strict (%)")
        axes[0][1].set_title("out of distribution: instruction following", fontsize=10)
    fig.suptitle(f"Experience consolidated into {r['student']}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
