"""The defaults study's cells against the issue's goal for a default, each behaviour's two seeds averaged.

The goal: the student without the prompt reaches at least 90 % of the in-context teacher's adherence (the persona:
90 % of the context gap closed, by reverse KL); like with like, it does no worse than the teacher; on what the
behaviour leaves alone it stays within 3 points of the base. What each behaviour leaves alone (`LEFT_ALONE`) was
written down on 2026-12-04 (late night), after the runs: the non-conflicting instructions where a conflict rule
exists (all 120 for the persona and the leg-counting prompt, which have none), and GSM8K only under the list format
(the issue's own example); French, the word limit, the persona and the leg format change how GSM8K is answered, and
the teacher loses 4-16 points under them. "Arr!" is left out, as the goal allows.
"""

from __future__ import annotations

import statistics

LEFT_ALONE = {  # behaviour: the retention columns the goal's "within 3 points of the base" applies to
    "french": ("other",),
    "numbered": ("other", "gsm8k"),
    "brief": ("other",),
    "persona": ("instructions",),
    "legs": ("instructions",),
}


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.mean(values) if values else None


def _student_minus_base(s: dict, column: str) -> float | None:
    rates = s.get(column)
    return None if not rates else rates["student"] - rates["base"]


def goal_rows(results: dict) -> list[str]:
    """One row per (behaviour, cell) with two or more seeds: each criterion's mean over the seeds, and how many of the
    criteria that apply the mean meets."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for key, s in sorted(results.items()):
        behaviour, cell, _ = key.split("/")
        if behaviour in LEFT_ALONE:
            cells.setdefault((behaviour, cell), []).append(s)
    lines = [
        "The goal for a default, each cell's seeds averaged (the columns that apply to a behaviour in `LEFT_ALONE`, "
        "`benchmarks/study_goal.py`): adherence as a share of the teacher's (the persona: share of the context gap "
        "closed), like with like student − teacher, and student − base on what the behaviour leaves alone.",
        "",
        "| behaviour | cell | seeds | adherence ÷ teacher (≥ 90 %) | like with like − teacher (≥ 0) | "
        "non-conflicting / all instructions − base (≥ −3) | GSM8K − base (≥ −3) | criteria met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (behaviour, cell), runs in cells.items():
        if len(runs) < 2:
            continue
        checks: list[bool] = []
        if runs[0]["adherence"] is None:
            share = _mean([s["gap_kl"] for s in runs])
        else:
            share = _mean([s["adherence"] / s["teacher"] if s["teacher"] else None for s in runs])
        checks.append(share is not None and share >= 0.9)
        like = _mean([s["like_shows"]["student"] - s["like_shows"]["in_context"] for s in runs if s["like_shows"]])
        if like is not None:
            checks.append(like >= 0)
        left = {c: _mean([_student_minus_base(s, c) for s in runs]) for c in ("other", "instructions", "gsm8k")}
        for column in LEFT_ALONE[behaviour]:
            checks.append(left[column] is not None and left[column] >= -0.03)
        instr = left["other"] if "other" in LEFT_ALONE[behaviour] else left["instructions"]
        gsm = f"{100 * left['gsm8k']:+.1f}" if "gsm8k" in LEFT_ALONE[behaviour] else "–"
        lines.append(
            f"| {behaviour} | {cell} | {len(runs)} | {_pct(share)} | {_points(like)} | {_points(instr)} | {gsm} | "
            f"{sum(checks)} of {len(checks)} |"
        )
    return lines


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _points(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"
