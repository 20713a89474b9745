"""The statistics the reports and the checkpoint choice use: a rate's standard error, paired and like-with-like
bootstrap intervals, passes split by a flag."""

from __future__ import annotations

import numpy as np


def rate_margin(rate: float, n: int) -> float:
    """One standard error of a rate measured on `n` items (0 without items)."""
    return (rate * (1 - rate) / n) ** 0.5 if n else 0.0


def paired_interval(base: list[bool], other: list[bool], draws: int = 2000) -> list[float]:
    """`other`'s rate minus `base`'s on the same items, with a 95 % paired bootstrap interval (items resampled, the
    two answers to an item kept together; a fixed seed): [difference, low, high]."""
    diff = np.asarray(other, dtype=float) - np.asarray(base, dtype=float)
    means = diff[np.random.default_rng(0).integers(0, len(diff), (draws, len(diff)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(diff.mean()), float(low), float(high)]


def like_interval(
    teacher: list[bool], teacher_shows: list[bool], student: list[bool], student_shows: list[bool], draws: int = 2000
) -> list[float] | None:
    """Like with like: the student's rate among its answers that show the behaviour minus the teacher's among its own,
    with a 95 % bootstrap interval (prompts resampled, both models' answers to a prompt kept together; a fixed seed):
    [difference, low, high], or None where either model never shows the behaviour."""
    t, ts, u, us = (np.asarray(x, dtype=float) for x in (teacher, teacher_shows, student, student_shows))
    if not ts.any() or not us.any():
        return None
    pick = np.random.default_rng(0).integers(0, len(t), (draws, len(t)))
    with np.errstate(invalid="ignore", divide="ignore"):  # a draw where one model shows nothing: left out (NaN)
        diffs = (u * us)[pick].sum(1) / us[pick].sum(1) - (t * ts)[pick].sum(1) / ts[pick].sum(1)
    low, high = np.nanpercentile(diffs, [2.5, 97.5])
    return [float((u * us).sum() / us.sum() - (t * ts).sum() / ts.sum()), float(low), float(high)]


def unflagged(passed: list[bool], flags: list[bool]) -> list[bool]:
    """The passes of the items whose flag is not set."""
    return [ok for ok, flag in zip(passed, flags, strict=True) if not flag]


def passes(passed: list[bool], flags: list[bool], want: bool) -> list[int]:
    """[passes, answers] among the items whose flag is `want`."""
    chosen = [ok for ok, flag in zip(passed, flags, strict=True) if flag == want]
    return [sum(chosen), len(chosen)]


def split_by_behaviour(passed: list[bool], shows: list[bool]) -> dict:
    """{"shows": [passes, answers], "not": [passes, answers]}: the suite's passes among answers with the behaviour
    and among those without."""
    return {"shows": passes(passed, shows, True), "not": passes(passed, shows, False)}
