"""Experiential knowledge (the paper's section 7): lessons from the model's own attempts, kept as a growing context.

`extract` solves problems (or plays games) and writes lessons (`lessons`), saving every intermediate context with its
validation score (`pool`); `load_pool` and `select` pick the contexts that `opcd.recipes.consolidate` distills.
"""

from opcd.experience.extraction import NO_CONTEXT, SETTINGS, check_settings, extract, plot_stairs
from opcd.experience.lessons import (
    ITEM_MARK,
    LESSON_PROMPTS,
    WRAPPERS,
    accumulate,
    lesson_items,
    parse_items,
    render,
    template,
)
from opcd.experience.pool import (
    Candidate,
    Record,
    accumulated,
    load_pool,
    read_records,
    seed_file,
    seeded_order,
    select,
    write_records,
    write_selection,
)
from opcd.experience.tasks import GameTask, MathTask, make_task, sampled

__all__ = [
    "ITEM_MARK", "LESSON_PROMPTS", "NO_CONTEXT", "SETTINGS", "WRAPPERS", "Candidate", "GameTask", "MathTask", "Record",
    "accumulate", "accumulated", "check_settings", "extract", "lesson_items", "load_pool", "make_task", "parse_items",
    "plot_stairs", "read_records", "render", "sampled", "seed_file", "seeded_order", "select", "template",
    "write_records", "write_selection",
]  # fmt: skip
