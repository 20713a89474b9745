"""Experiential knowledge: solve, extract lessons, accumulate them into contexts, and pick a context to distill.

The paper's section 7, stage by stage:

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

import dataclasses
import json
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from opcd.errors import OpcdError

ITEM_MARK = "- EXPERIENCE ITEM:"

# The in-context wrappers the teacher (and the In-Context baseline) sees; {context} = the experience, {prompt} =
# the problem or the game turn. Written for this project after the paper's description.
WRAPPERS = {
    "math": (
        "Here is experience learned from solving earlier problems:\n# Experience\n{context}\n\n"
        "Solve the new problem below. Say which parts of the experience you use and how you use them in your "
        "reasoning.\n\n{prompt}"
    ),
    "game": (
        "You are an agent playing a game on a grid. Your decisions rest on rules and strategies learned from earlier "
        "games; they may be incomplete or wrong.\n# Experience\n{context}\n\n{prompt}"
    ),
}

LESSON_PROMPTS = {
    "math": (
        "You just solved a problem. Here is the problem and your solution:\n\n{trace}\n\n"
        "Experience collected so far:\n{experience}\n\n"
        "Write one or two general lessons that would help with similar problems in the future: strategies, checks, "
        "or mistakes to avoid. Do not repeat the experience above. Write each lesson on its own line starting with "
        "'- EXPERIENCE ITEM:' and write nothing else."
    ),
    "game": (
        "You just played a game on a grid whose rules you were not told. Here is the game, round by round:\n\n"
        "{trace}\n\nExperience collected so far:\n{experience}\n\n"
        "Infer the rules of the game and the principles behind winning and losing. Write one or two concise, "
        "general lessons that do not repeat the experience above, each on its own line starting with "
        "'- EXPERIENCE ITEM:', and write nothing else."
    ),
}


_ITEM = re.compile(r"^[\s>*#\-\d.)]*experience item\W*?:[\s*]*(.*)", re.IGNORECASE)


def parse_items(text: str) -> list[str]:
    """The lessons in a model's answer: reasoning before `</think>` dropped, only `- EXPERIENCE ITEM:` lines kept.

    Small models bend the format ("EXPERIENCE ITEM: ...", "1. - Experience item: ...", "**Experience Item:**"), so
    the marker is matched in any case at the start of a line, after any list or bold marker; everything else in
    the answer is ignored (an instruction echoed mid-line is not a lesson)."""
    text = text.split("</think>")[-1]
    items = []
    for line in text.splitlines():
        found = _ITEM.search(line)
        if found:
            item = found.group(1).strip().strip("*").strip()
            if item:
                items.append(item)
    return items


def lesson_items(answer: str, finished: bool, limit: int) -> list[str]:
    """The items of one lesson answer: a last item cut off by the token budget is not a lesson; at most `limit`."""
    items = parse_items(answer)
    if items and not finished and answer.rstrip().endswith(items[-1]):
        items.pop()
    return items[:limit] if limit else items


def render(items: list[str]) -> str:
    """The experience block as the teacher reads it."""
    return "\n".join(f"{ITEM_MARK} {item}" for item in items)


def accumulate(items: list[str], new: list[str], budget: int, count_tokens) -> tuple[list[str], list[str]]:
    """Append the new items not already present; drop the oldest whole items while over `budget` tokens.

    Returns (kept items, dropped items). A new item that alone exceeds the budget is dropped on its own, so it
    does not push out the whole context first."""
    merged, dropped = list(items), []
    for item in new:
        if count_tokens(render([item])) > budget:
            dropped.append(item)
        elif item not in merged:
            merged.append(item)
    while merged and count_tokens(render(merged)) > budget:
        dropped.append(merged.pop(0))
    return merged, dropped


@dataclass
class Record:
    """The context after `step` problems of one seed (line `step` of that seed's file)."""

    seed: int
    step: int
    problem: str  # what was solved (math: the problem; games: the environment seed)
    trace: str  # what the model was shown when asked for lessons
    lesson: str  # the model's whole answer to the lesson request (the items are parsed from it)
    success: bool | None  # games: the episode's result; math: None (no labels are used)
    new_items: list[str]
    items: list[str]  # the accumulated experience after this step
    dropped: list[str]
    tokens: int  # rendered experience tokens
    validation: float | None  # accuracy with this context on the validation problems (None: not measured)
    validation_n: int = 0

    @property
    def context(self) -> str:
        return render(self.items)


RECORD_FIELDS = {f for f in Record.__dataclass_fields__}


def seed_file(folder: Path, seed: int) -> Path:
    return folder / f"seed-{seed}.jsonl"


def read_records(path: Path) -> list[Record]:
    """A seed file, checked line by line; a corrupt or truncated line fails with its location and what to do."""
    from opcd.data import read_jsonl

    records = []
    redo = ": delete this line and the ones after it to redo those problems, or the file to start the seed over"
    for where, row in read_jsonl(path, advice=f" (a truncated or hand-edited file?){redo}"):
        if set(row) != RECORD_FIELDS:
            missing, unexpected = sorted(RECORD_FIELDS - set(row)), sorted(set(row) - RECORD_FIELDS)
            raise OpcdError(
                f"{where}: not an experience record (missing {', '.join(missing) or 'nothing'}; "
                f"unexpected {', '.join(unexpected) or 'nothing'})"
            )
        lists = ("items", "new_items", "dropped")
        if not all(isinstance(row[k], list) and all(isinstance(i, str) for i in row[k]) for k in lists):
            raise OpcdError(f"{where}: 'items', 'new_items' and 'dropped' must be lists of strings")
        numbers = ("seed", "step", "tokens", "validation_n")
        if not all(type(row[k]) is int for k in numbers) or not isinstance(row["validation"], (int, float, type(None))):
            raise OpcdError(
                f"{where}: 'seed', 'step', 'tokens', 'validation_n' must be integers, 'validation' a number"
            )
        if row["step"] != len(records) + 1:
            raise OpcdError(
                f"{where}: step {row['step']} where step {len(records) + 1} was expected (lines out of "
                "order or duplicated): delete this line and the ones after it to redo those problems"
            )
        records.append(Record(**row))
    return records


def write_records(path: Path, records: list[Record]) -> None:
    """Rewrite a seed file atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Candidate:
    seed: int
    step: int
    items: tuple[str, ...]
    validation: float | None
    tokens: int

    @property
    def context(self) -> str:
        return render(list(self.items))

    @property
    def name(self) -> str:
        return f"seed {self.seed}, {self.step} problems"


def load_pool(folder: Path, budget: int) -> list[Candidate]:
    """Every intermediate context with at least one item, from every seed file in `folder`."""
    files = sorted(folder.glob("seed-*.jsonl"))
    if not files:
        raise OpcdError(f"{folder}: no experience files (seed-N.jsonl): run `opcd experience extract` first")
    pool = []
    for path in files:
        for r in read_records(path):
            if r.items:
                if r.tokens > budget:
                    raise OpcdError(
                        f"{path}:{r.step}: the context has {r.tokens} tokens, over experience.token_budget={budget}: "
                        "raise the budget or re-extract with this one"
                    )
                pool.append(Candidate(r.seed, r.step, tuple(r.items), r.validation, r.tokens))
    if not pool:
        raise OpcdError(
            f"{folder}: the experience pool is empty: no problem produced a '{ITEM_MARK}' line. Read the 'lesson' "
            "fields of the seed files (the model's answers); a larger experience.lesson_tokens or another lesson "
            "prompt may help"
        )
    return pool


def select(pool: list[Candidate], how: str, count: int = 3, seed: int = 0) -> list[Candidate]:
    """`best`: the highest validation accuracy (ties: fewer tokens, then earlier); `random`: `count` distinct ones."""
    if how == "best":
        measured = [c for c in pool if c.validation is not None]
        if not measured:
            raise OpcdError("no candidate context has a validation score: extract with experience.validation_max > 0")
        return [max(measured, key=lambda c: (c.validation, -c.tokens, -c.seed, -c.step))]
    if how == "random":
        if count < 1:
            raise OpcdError("--count must be >= 1")
        if count > len(pool):
            raise OpcdError(f"asked for {count} random contexts but the pool holds {len(pool)}")
        return random.Random(seed).sample(pool, count)
    raise OpcdError(f"unknown selection '{how}': use best or random")


def template(path: str, default: str, fields: tuple[str, ...], key: str) -> str:
    """A prompt template from a file (or the built-in one), checked for its placeholders."""
    if not path:
        return default
    file = Path(path)
    if not file.is_file():
        raise OpcdError(f"{key}: template file '{path}' not found")
    text = file.read_text(encoding="utf-8")
    missing = [f for f in fields if "{" + f + "}" not in text]
    if missing:
        raise OpcdError(f"{key}: template '{path}' lacks {', '.join('{' + f + '}' for f in missing)}")
    return text


class MathTask:
    """Word problems: an attempt is one sampled answer; validation is greedy accuracy on the validation set."""

    kind = "math"

    def __init__(self, cfg, tokenizer):
        from opcd.config import DataConfig
        from opcd.data import check_disjoint, load_examples
        from opcd.prompts import PromptRenderer

        e = cfg.experience
        self.cfg, self.tokenizer = cfg, tokenizer
        self.problems = load_examples(DataConfig(prompts=e.problems), require_context=False)
        self.validation = []
        if e.validation_max:
            data = DataConfig(prompts=e.validation, max_prompts=e.validation_max)
            self.validation = load_examples(data, require_context=False)
            missing = [x.source for x in self.validation if x.answer is None]
            if missing:
                raise OpcdError(f"{missing[0]}: validation problems need an 'answer' to score contexts")
            check_disjoint(self.problems, self.validation, e.problems, e.validation, "validation")
        if e.problems_per_seed > len(self.problems):
            raise OpcdError(
                f"experience.problems_per_seed={e.problems_per_seed} but '{e.problems}' holds {len(self.problems)}"
            )
        wrapper = template(e.wrapper, WRAPPERS["math"], ("context", "prompt"), "experience.wrapper")
        self.renderer = PromptRenderer(
            tokenizer, DataConfig(prompts=e.problems, placement="user", user_template=wrapper)
        )
        self.lesson = template(
            e.lesson_prompt, LESSON_PROMPTS["math"], ("trace", "experience"), "experience.lesson_prompt"
        )

    def order(self, seed: int) -> list[int]:
        """The problems seed `seed` solves, in order."""
        return seeded_order(len(self.problems), self.cfg.experience.problems_per_seed, seed)

    def name(self, index: int) -> str:
        return self.problems[index].messages[-1]["content"]

    def attempt(self, model, index: int, seed: int) -> tuple[str, bool | None]:
        """Solve problem `index` without context (sampled); returns (trace, success=None: math uses no labels)."""
        from opcd.evaluate import respond

        e, problem = self.cfg.experience, self.problems[index]
        ids = self.renderer.student_ids(problem.messages)
        rollout = sampled(self.cfg, e.solve_tokens)
        [answer], _ = respond(model, self.tokenizer, [ids], rollout, self.cfg.model.dtype, seed)
        return f"Input: {problem.messages[-1]['content']}\nOutput: {answer.strip()}", None

    def answers(self, model, context: str | None, max_new_tokens: int, desc: str | None = None):
        """Greedy answers to the validation problems and whether each ended, with `context` in the wrapper (None:
        no context)."""
        from opcd.evaluate import respond

        if context is None:
            prompts = [self.renderer.student_ids(x.messages) for x in self.validation]
        else:
            prompts = [self.renderer.render(x.messages, context).teacher_ids for x in self.validation]
        return respond(model, self.tokenizer, prompts, greedy(max_new_tokens), self.cfg.model.dtype, desc=desc)

    def correct(self, texts: list[str]) -> list[bool]:
        from opcd.tasks.graders import number

        return [number(t, x.answer) for t, x in zip(texts, self.validation, strict=True)]

    def score(self, model, context: str | None) -> float:
        """Greedy accuracy on the validation problems, with `context` in the wrapper (None: no context)."""
        texts, _ = self.answers(model, context, self.cfg.experience.eval_tokens)
        return sum(self.correct(texts)) / len(self.validation)


def seeded_order(n: int, k: int, seed: int) -> list[int]:
    """The first k of a seeded shuffle of range(n): asking for more problems later extends the same order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[:k]


def sampled(cfg, max_new_tokens: int):
    """Extraction samples with the paper's evaluation settings (T 1.0, top-p 0.95, top-k 20), not the training ones."""
    import dataclasses

    from opcd.evaluate import PAPER_EVAL

    return dataclasses.replace(PAPER_EVAL, max_new_tokens=max_new_tokens, batch_size=0)


def greedy(max_new_tokens: int):
    from opcd.config import RolloutConfig

    return RolloutConfig(temperature=0.0, max_new_tokens=max_new_tokens, batch_size=32)


def make_task(cfg, tokenizer):
    if cfg.experience.task == "math":
        return MathTask(cfg, tokenizer)
    from opcd.episodes import GameTask

    return GameTask(cfg, tokenizer)


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


def extract(cfg, progress: bool = True) -> Path:
    """Run (or resume) the extraction of every seed; returns the experience folder."""
    from tqdm import tqdm

    from opcd import models
    from opcd.evaluate import respond

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
            trace, success = task.attempt(model, order[step - 1], seed * 1_000_003 + step)
            ask = task.lesson.format(trace=trace, experience=render(items) or "(none yet)")
            ids = task.renderer.student_ids([{"role": "user", "content": ask}])
            lesson_seed = seed * 1_000_003 + step + 500_000
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


NO_CONTEXT = "no-context.json"
SETTINGS = "settings.json"


def check_settings(folder: Path, cfg, task) -> None:
    """Everything that shapes the contexts is recorded with the first problem; a resume under other settings would
    mix two extractions in one file, so it is refused (more seeds or problems per seed are fine)."""
    from opcd.data import file_digest

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
        "wrapper": task.renderer.data.user_template,
        "lesson_prompt": task.lesson,
    }
    path = folder / SETTINGS
    if path.exists():
        saved = read_json(path)
        changed = sorted(k for k in now if saved.get(k) != now[k])
        if changed:
            raise OpcdError(
                f"{folder} was extracted with other settings ({', '.join(changed)}): use another experience.dir, "
                "or set them back to continue it"
            )
    elif any(folder.glob("seed-*.jsonl")):
        raise OpcdError(f"{folder} holds seed files but no {SETTINGS}: use another experience.dir")
    else:
        from opcd.versions import software

        write_json(path, now | {"software": software()})  # kept, not compared: a resume after an upgrade is fine


def accumulated(records: list[Record]) -> int:
    """Items gathered so far: those in the context plus those the token budget pushed out."""
    return len(records[-1].items) + sum(len(r.dropped) for r in records)


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=1))


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise OpcdError(f"{path}: cannot read ({e}); delete it to recompute") from None


def plot_stairs(folder: Path) -> Path | None:
    """Validation accuracy against the number of accumulated items, one line per seed (the stair-step curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(folder.glob("seed-*.jsonl"))
    if not files:
        return None
    base = read_json(folder / NO_CONTEXT)["validation"] if (folder / NO_CONTEXT).exists() else None
    fig, ax = plt.subplots(figsize=(6.5, 4))
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
    out = folder / "stairs.png"
    tmp = folder / ".stairs.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def write_selection(folder: Path, how: str, chosen: list[Candidate]) -> Path:
    """The chosen contexts as JSON (with where they came from) and each as a text file for data.context_file."""
    rows = []
    for n, c in enumerate(chosen):
        text = folder / f"context-{how}-{n}.txt"
        write_text(text, c.context)
        rows.append({"file": str(text), "seed": c.seed, "step": c.step, "validation": c.validation, "tokens": c.tokens})
    out = folder / f"selected-{how}.json"
    write_json(out, rows)
    return out


def write_per_prompt(cfg, pool: list[Candidate], seed: int) -> Path:
    """A training file where every problem carries its own context, drawn at random from the pool (math)."""
    from opcd.data import read_jsonl, resolve_path

    if cfg.experience.task != "math":
        raise OpcdError("--per-prompt writes a prompts file, which games do not have (their prompts are game turns)")
    rng = random.Random(seed)
    rows = [
        {**row, "context": rng.choice(pool).context} for _, row in read_jsonl(resolve_path(cfg.experience.problems))
    ]
    out = Path(cfg.experience.dir) / "per-prompt.jsonl"
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    from opcd.config import save_config
    from opcd.consolidate import run_config

    # a ready training config: these rows, each context in the task's in-context wrapper on the teacher's side
    train_cfg = run_config(cfg, "", "opcd", cfg.train.seed, Path(cfg.experience.dir) / "per-prompt-run")
    train_cfg = dataclasses.replace(train_cfg, data=dataclasses.replace(train_cfg.data, prompts=str(out)))
    save_config(train_cfg, out.with_suffix(".toml"))
    return out


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
