"""Extraction: solve, write lessons, accumulate them into contexts, score every intermediate context.

The paper's section 7, stage by stage (this module runs 1 and 2; `opcd.experience.pool` holds 3):

1. **Extract.** For each seed, the model solves problems one after another *without* context (math: one answer;
   games: one episode). After each, it is shown its own trace and the experience so far, and asked for general,
   reusable lessons as `- EXPERIENCE ITEM:` lines. Text before `</think>` is dropped; only item lines are kept.
2. **Accumulate.** New items are appended in order; while the rendered experience is over `token_budget` tokens the
   oldest whole items are dropped. Every intermediate context is saved with its validation accuracy (the model
   *with* that context in the in-context wrapper), one JSONL file per seed: `DIR/seed-N.jsonl`, line k = the context
   after k problems. Accuracy rises in steps as items arrive (`DIR/stairs.png`).
3. **Select.** From the pool of all intermediate contexts of all seeds: the best on validation, or random ones.

Each seed file is rewritten atomically after every problem and every problem is seeded by (seed, problem), so an
interrupted extraction resumes at the next problem with nothing lost or repeated.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from opcd.config import Config, check_ranges
from opcd.core import models
from opcd.core.data import file_digest
from opcd.core.rollout import step_seed
from opcd.errors import OpcdError
from opcd.evaluate import respond
from opcd.experience.lessons import accumulate, lesson_items, render
from opcd.experience.pool import Record, accumulated, read_records, seed_file, write_records
from opcd.experience.tasks import make_task, sampled
from opcd.io import pyplot, read_json, save_figure, write_json
from opcd.versions import software

NO_CONTEXT = "no-context.json"
SETTINGS = "settings.json"
ADDED_LATER = {"feedback": False}  # settings newer than some settings.json files, with the value those were made with


def _check_matches(path: Path, records: list[Record], task, order: list[int]) -> None:
    """A seed file must come from the same problems in the same order, or resuming would mix two extractions."""
    if len(records) > len(order):
        raise OpcdError(
            f"{path} holds {len(records)} problems, more than experience.problems_per_seed={len(order)}: raise it, "
            "or use another experience.dir"
        )
    for r in records:
        if r.problem != task.name(order[r.step - 1]):
            raise OpcdError(
                f"{path}:{r.step}: this line solved another problem than the current settings would "
                "(experience.problems, task or seed changed): use another experience.dir, or delete the file"
            )


def extract(cfg: Config, progress: bool = True) -> Path:
    """Run (or resume) the extraction of every seed; returns the experience folder."""
    check_ranges(cfg)  # out-of-range settings fail here, before any model loads
    e = cfg.experience
    folder = Path(e.dir)
    name = e.model or cfg.model.student
    tokenizer = models.load_tokenizer(name)
    task = make_task(cfg, tokenizer)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    check_settings(folder, cfg, task)
    plan = {seed: task.order(seed) for seed in range(e.seeds)}
    existing = {}
    for seed, order in plan.items():
        path = seed_file(folder, seed)
        existing[seed] = read_records(path) if path.exists() else []
        _check_matches(path, existing[seed], task, order)
    todo = sum(e.problems_per_seed - min(len(r), e.problems_per_seed) for r in existing.values())
    folder.mkdir(parents=True, exist_ok=True)
    if todo == 0 and (not e.validation_max or (folder / NO_CONTEXT).exists()):
        plot_stairs(folder)
        return folder
    model = models.load_model(name, cfg.model.dtype, cfg.model.device).eval()
    if e.validation_max and not (folder / NO_CONTEXT).exists():
        write_json(folder / NO_CONTEXT, {"validation": task.score(model, None), "model": name})
    bar = tqdm(total=todo, desc="experience", unit="problem", disable=not progress)
    for seed, order in plan.items():
        records, path = existing[seed], seed_file(folder, seed)
        for step in range(len(records) + 1, e.problems_per_seed + 1):
            items = records[-1].items if records else []
            trace, success = task.attempt(model, order[step - 1], step_seed(seed, step))
            ask = task.lesson.format(trace=trace, experience=render(items) or "(none yet)")
            ids = task.renderer.student_ids([{"role": "user", "content": ask}])
            lesson_seed = step_seed(seed, step) + 500_000
            [answer], [finished] = respond(
                model, tokenizer, [ids], sampled(cfg, e.lesson_tokens), cfg.model.dtype, lesson_seed
            )
            new = lesson_items(answer, finished, e.items_per_problem)
            kept, dropped = accumulate(items, new, e.token_budget, count)
            if not e.validation_max:
                accuracy = None
            elif records and kept == items:
                accuracy = records[-1].validation  # the same context: the same greedy answers
            else:
                accuracy = task.score(model, render(kept)) if kept else read_json(folder / NO_CONTEXT)["validation"]
            records.append(
                Record(
                    seed,
                    step,
                    task.name(order[step - 1]),
                    trace,
                    answer,
                    success,
                    new,
                    kept,
                    dropped,
                    count(render(kept)) if kept else 0,
                    accuracy,
                    len(task.validation),
                )
            )
            write_records(path, records)
            bar.update(1)
            bar.set_postfix(seed=seed, items=len(kept), val=f"{accuracy:.2f}" if accuracy is not None else "-")
    bar.close()
    plot_stairs(folder)
    return folder


def _sampling(rollout) -> tuple:
    return rollout.temperature, rollout.top_p, rollout.top_k


def check_settings(folder: Path, cfg: Config, task) -> None:
    """Everything that shapes the contexts is recorded with the first problem; a resume under other settings would
    mix two extractions in one file, so it is refused (more seeds or problems per seed are fine)."""
    e = cfg.experience
    now = {
        "task": e.task,
        "model": e.model or cfg.model.student,
        "dtype": cfg.model.dtype,
        "problems": file_digest(e.problems) if e.task == "math" else "",
        "validation": file_digest(e.validation) if e.task == "math" and e.validation_max else "",
        "validation_max": e.validation_max,
        "token_budget": e.token_budget,
        "solve_tokens": e.solve_tokens,
        "lesson_tokens": e.lesson_tokens,
        "eval_tokens": e.eval_tokens,
        "items_per_problem": e.items_per_problem,
        "feedback": e.feedback,
        "sampling": list(_sampling(sampled(cfg, 0))),
        "wrapper": task.renderer.data.user_template,
        "lesson_prompt": task.lesson,
    }
    path = folder / SETTINGS
    if path.exists():
        saved = read_json(path)
        changed = sorted(k for k in now if saved.get(k, ADDED_LATER.get(k)) != now[k])
        if changed:
            raise OpcdError(
                f"{folder} was extracted with other settings ({', '.join(changed)}): use another experience.dir, "
                "or set them back to continue it"
            )
    elif any(folder.glob("seed-*.jsonl")):
        raise OpcdError(f"{folder} holds seed files but no {SETTINGS}: use another experience.dir")
    else:
        write_json(path, now | {"software": software()})  # kept, not compared: a resume after an upgrade is fine


def plot_stairs(folder: Path) -> Path | None:
    """Validation accuracy against the number of accumulated items, one line per seed (the stair-step curve)."""
    files = sorted(folder.glob("seed-*.jsonl"))
    if not files:
        return None
    base = read_json(folder / NO_CONTEXT)["validation"] if (folder / NO_CONTEXT).exists() else None
    fig, ax = pyplot().subplots(figsize=(6.5, 4))
    for path in files:
        records = [r for r in read_records(path) if r.validation is not None]
        if not records:
            continue
        gathered = [accumulated(records[: i + 1]) for i in range(len(records))]
        accuracy = [base if base is not None else records[0].validation] + [r.validation for r in records]
        ax.step([0, *gathered], [100 * a for a in accuracy], where="post", marker=".", label=f"seed {records[0].seed}")
    if base is not None:
        ax.axhline(100 * base, color="grey", ls=":", label="no context")
    ax.set_xlabel("experience items accumulated (the oldest drop out over the token budget)")
    ax.set_ylabel("validation accuracy with the context (%)")
    ax.set_ylim(-2, 102)  # the whole scale: one validation problem of 16 (6 %) must not look like a collapse
    ax.set_title("Accumulated experience")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, folder / "stairs.png")
    return folder / "stairs.png"
