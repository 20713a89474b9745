"""Consolidation: move a selected experience into the weights, and compare with the paper's baselines.

For every selected context, every method (`offpolicy`, `opcd`) and every training seed, one distillation run: the
teacher is the frozen model (or the larger `model.teacher`) with the experience in the in-context wrapper, the
student sees the bare problem (math) or game turn. Base and In-Context (the student model *with* the experience in
its prompt) are measured on the same test set; for a cross-size teacher, the teacher with its own experience too.
Math and games run the same pipeline (`opcd.recipes.pipeline`), each with its yardstick: math is tested on the first
problems of `experience.test` (GSM8K unless set), games on fixed test environments.

Each run goes into its own process (a long sweep in one process keeps growing in memory here) and its own run
directory under `DIR/consolidate/`, so rerunning the command resumes: finished runs are read back, not redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import random
import re
import signal
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

from opcd.config import Config, DataConfig, RolloutConfig, build_config, load_config, save_config
from opcd.core.checkpoint import changed_keys
from opcd.core.data import check_disjoint, load_examples, read_jsonl, resolve_path
from opcd.errors import OpcdError
from opcd.experience import NO_CONTEXT, WRAPPERS, Candidate, load_pool, select, template
from opcd.games.episodes import VALIDATION_SEEDS, source_for
from opcd.io import cached, read_json, write_json, write_text
from opcd.recipes.consolidate_table import plot, table
from opcd.recipes.games import GameYardstick
from opcd.recipes.pipeline import OOD_DEFAULT, Yardstick, distill_and_measure, preflight, student_name, teacher_model
from opcd.recipes.report import BASE, IN_CONTEXT
from opcd.recipes.system_prompt import EvalPlan, PromptYardstick
from opcd.tasks.graders import without_number
from opcd.versions import software

METHODS = ("offpolicy", "opcd")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to consolidate and how to test it."""

    selection: str = "best"  # best | random
    count: int = 3  # random: contexts drawn from the pool
    selection_seed: int = 0
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1)  # training seeds
    test_n: int = 40  # math: the first problems of `experience.test` (GSM8K); games: test environments 0..N-1
    ood: bool = True  # instruction following (IF-Eval style), base and students
    checkpoint: str = "validation"  # validation: the best checkpoint on the experience's validation split | last
    out: str = ""  # where runs and tables go ("" = DIR/consolidate): other settings beside the first ones


CHECKPOINT_RULES = ("last", "validation")
PAPER_SAVE_EVERY = 2  # the paper saves a checkpoint every 2 steps and reports the best one


def _run_suffix(checkpoint: str) -> str:
    return "" if checkpoint == "last" else "-by-validation"  # other checkpoints kept: another run


def _run_name(method: str, seed: int, checkpoint: str) -> str:
    """A run's directory name under its context's folder; `_run_name_pattern` reads it back."""
    return f"{method}-seed{seed}{_run_suffix(checkpoint)}"


def _run_name_pattern(checkpoint: str) -> re.Pattern:
    return re.compile(rf"({'|'.join(METHODS)})-seed(\d+){re.escape(_run_suffix(checkpoint))}")


def _wrapper(cfg: Config) -> str:
    kind = "math" if cfg.experience.task == "math" else "game"
    return template(cfg.experience.wrapper, WRAPPERS[kind], ("context", "prompt"), "experience.wrapper")


def run_config(cfg: Config, context: str, method: str, seed: int, run_dir: Path, checkpoint: str = "last") -> Config:
    """The distillation run for one (context, method, seed). Selecting the checkpoint on validation keeps every
    checkpoint, saved every `train.save_every` steps (every 2, the paper's setting, where that is 0)."""
    e = cfg.experience
    train = dataclasses.replace(cfg.train, seed=seed, run_dir=str(run_dir))
    if checkpoint == "validation":
        train = dataclasses.replace(train, save_every=cfg.train.save_every or PAPER_SAVE_EVERY, keep_checkpoints=0)
    prompts = e.problems if e.task == "math" else f"game:{e.task}"
    data = DataConfig(
        **{
            **asdict(cfg.data),
            "prompts": prompts,
            "context": context,
            "context_file": "",
            "placement": "user",
            "user_template": _wrapper(cfg),
        }
    )
    return dataclasses.replace(
        cfg,
        data=data,
        loss=dataclasses.replace(cfg.loss, mode=method),
        train=train,
    )


def ood_suites(plan: Plan) -> dict:
    return {"instructions": OOD_DEFAULT["instructions"]} if plan.ood else {}


def yardstick(cfg: Config, plan: Plan, progress: bool = True) -> Yardstick:
    """Math: the test problems of `experience.test` (GSM8K unless set), the checkpoint on `experience.validation`;
    games: the test environments, the checkpoint on the validation environments."""
    by_validation = plan.checkpoint == "validation"
    e = cfg.experience
    if e.task != "math":
        return GameYardstick(cfg, plan.test_n, e.validation_max if by_validation else 0, progress)
    math = EvalPlan(
        scorer=("number",),
        test_prompts=e.test,
        test_max=plan.test_n,
        validation_prompts=e.validation if by_validation else "",
        validation_max=e.validation_max if by_validation else 0,
        rollout=RolloutConfig.greedy(e.eval_tokens, 32),
        gap=False,  # the paper's measure here is accuracy; the gap over long experience contexts costs as much again
    )
    return PromptYardstick(cfg, math)


ERROR = "error.txt"


def _cell(cfg_dict: dict, plan: Plan, folder: str, progress: bool) -> None:
    """One distillation run, in its own process; a refusal is handed to the parent as one line in `error.txt`."""
    cfg = build_config(cfg_dict, "consolidation cell")
    try:
        preflight(cfg)
        yard = yardstick(cfg, plan, progress)
        distill_and_measure(
            cfg,
            yard,
            ood=ood_suites(plan),
            keep_weights=False,
            base_cache=str(Path(folder) / "base"),
            source=source_for(cfg, yard.renderer.tokenizer),
            progress=progress,
        )
    except OpcdError as e:
        write_text(Path(cfg.train.run_dir) / ERROR, str(e))
        sys.exit(2)


def run_cell(cfg: Config, plan: Plan, folder: Path, progress: bool, test: dict) -> dict:
    """The results of one (context, method, seed) run: read back if finished, else run in a fresh process; a run
    measured on another test set than `test` (`check_plan`'s) is refused, not mixed into the table."""
    run = Path(cfg.train.run_dir)
    done = run / "results.json"
    if (run / "config.toml").is_file():  # a finished (or started) run is reused only for exactly this config
        changed = changed_keys(load_config(run / "config.toml", []).to_dict(), cfg.to_dict())
        if changed:
            raise OpcdError(
                f"{run} holds a run with other settings ({', '.join(changed)}): delete it, or put the new runs "
                "beside it with --out"
            )
    if not done.is_file():
        (run / ERROR).unlink(missing_ok=True)
        process = multiprocessing.get_context("spawn").Process(
            target=_cell, args=(cfg.to_dict(), plan, str(folder), progress)
        )
        process.start()
        process.join()
        if (run / ERROR).is_file():
            raise OpcdError((run / ERROR).read_text())
        if process.exitcode != 0 or not done.is_file():
            raise OpcdError(cell_failure(run, process.exitcode))
    results = json.loads(done.read_text())
    if results.get("test") != test:
        made = results.get("test") or {}
        raise OpcdError(
            f"{run} was tested on {made.get('prompts')} ({made.get('n')}), not {test['prompts']} ({test['n']}): "
            "delete it, or put the new runs beside it with --out"
        )
    return results


def cell_failure(run: Path, exitcode: int | None) -> str:
    if exitcode == -signal.SIGKILL:
        return (
            f"consolidation run {run} was killed (SIGKILL, most often the out-of-memory killer): lower "
            "train.micro_batch_size or run one job at a time, then rerun the same command to continue"
        )
    return f"consolidation run {run} failed (exit code {exitcode}); see its output above"


def teacher_scores(cfg: Config, plan: Plan, folder: Path, contexts: list[Candidate]) -> tuple[float | None, list]:
    """Cross-size: the larger model on the same test set, without a context and with its own experience."""
    teacher = teacher_model(cfg)
    if teacher == cfg.model.student:
        return None, []
    without, rates = None, []
    for c in contexts:
        cell = run_config(cfg, c.context, "opcd", 0, folder / "unused")
        t_cfg = dataclasses.replace(cell, model=dataclasses.replace(cell.model, student=teacher))
        yard = yardstick(t_cfg, dataclasses.replace(plan, checkpoint="last"))

        def measure(with_context: bool, yard=yard) -> dict:
            label = "teacher with its experience" if with_context else "teacher without a context"
            return yard.measure(teacher, with_context=with_context, label=label)

        if without is None:  # the same for every context: measured once
            without = cached(folder / "base", "teacher-without", yard.key, partial(measure, False))["rate"]
        rates.append(cached(folder / "base", "teacher-in-context", yard.key, partial(measure, True))["rate"])
    return without, rates


def context_digest(text: str) -> str:
    """Runs are filed under their context's digest: another selection of the same context reuses them."""
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def check_plan(cfg: Config, plan: Plan) -> dict:
    """Refuse a plan that cannot run, before any extraction or training; returns the test set its runs are
    measured on, as their `results.json` records it."""
    e = cfg.experience
    if plan.test_n < 1 or not plan.seeds or not plan.methods:
        raise OpcdError("consolidation needs --test-n >= 1, at least one training seed and one method")
    for method in plan.methods:
        if method not in METHODS:
            raise OpcdError(f"unknown method '{method}': use {' or '.join(METHODS)}")
    if plan.checkpoint not in CHECKPOINT_RULES:
        raise OpcdError(f"unknown checkpoint rule '{plan.checkpoint}': use {' or '.join(CHECKPOINT_RULES)}")
    if plan.checkpoint == "validation" and (e.validation_max < 1 or (e.task == "math" and not e.validation)):
        raise OpcdError(
            "--checkpoint validation (the default) scores every checkpoint on the validation split: set "
            "experience.validation (math) and experience.validation_max >= 1, or report the last with --checkpoint last"
        )
    if e.task != "math":
        if plan.test_n > VALIDATION_SEEDS:
            raise OpcdError(
                f"--test-n {plan.test_n} reaches the validation environments ({VALIDATION_SEEDS}+): use fewer"
            )
        return {"prompts": f"{e.task} environments 0..{plan.test_n - 1}", "n": plan.test_n}
    test = load_examples(DataConfig(prompts=e.test, max_prompts=plan.test_n), require_context=False)
    ungraded = without_number(test)
    if ungraded:
        raise OpcdError(f"{ungraded[0]}: experience.test problems need an 'answer' holding a number to grade")
    problems = load_examples(DataConfig(prompts=e.problems), require_context=False)
    check_disjoint(problems, test, e.problems, e.test, "test")
    return {"prompts": e.test, "n": len(test)}


def consolidate(cfg: Config, plan: Plan, progress: bool = True) -> dict:
    """Select, distill every (context, method, seed), and write the comparison table."""
    began = time.time()
    e = cfg.experience
    folder = Path(plan.out) if plan.out else Path(e.dir) / "consolidate"
    test = check_plan(cfg, plan)
    pool = load_pool(Path(e.dir), e.token_budget)
    chosen = select(pool, plan.selection, plan.count, plan.selection_seed)
    none = Path(e.dir) / NO_CONTEXT
    if plan.selection == "best" and none.exists() and progress:
        without = read_json(none)["validation"]
        if chosen[0].validation <= without:
            print(
                f"opcd: warning: the best context scores {chosen[0].validation:.1%} on validation, no context "
                f"{without:.1%}: this experience does not help the model that extracted it, so distilling it may not"
            )
    suffix = _run_suffix(plan.checkpoint)
    cells: dict[tuple[int, str, int], dict] = {}
    for n, candidate in enumerate(chosen):
        for method in plan.methods:
            for seed in plan.seeds:
                run_dir = (
                    folder / f"context-{context_digest(candidate.context)}" / _run_name(method, seed, plan.checkpoint)
                )
                cell = run_config(cfg, candidate.context, method, seed, run_dir, plan.checkpoint)
                cells[n, method, seed] = run_cell(cell, plan, folder, progress, test)
    first = cells[0, plan.methods[0], plan.seeds[0]]
    cells |= _finished_beside(cfg, plan, folder, chosen, cells, first)
    rules = {r["checkpoint"]["rule"] for r in cells.values()}
    if plan.checkpoint == "validation" and len(rules) > 1:  # a rerun after experience.validation* changed
        raise OpcdError(
            f"the runs under {folder} chose their checkpoints on different validation splits ({'; '.join(rules)}): "
            "delete the *-by-validation runs made with the old split, or put the new ones beside them with --out"
        )
    results = summarize(cfg, plan, folder, chosen, cells, first) | {"seconds": time.time() - began}
    name = f"results-{plan.selection}{suffix}"  # each rule keeps its own table
    write_json(folder / f"{name}.json", results)
    write_text(folder / f"{name}.md", table(results))
    plot(results, folder / f"{name}.png")
    return results


def summarize(
    cfg: Config, plan: Plan, folder: Path, chosen: list[Candidate], cells: dict[tuple[int, str, int], dict], first: dict
) -> dict:
    """The table's numbers from every run's results: Base and In-Context per context, the students per method
    (context by context, seed by seed), instruction following, and the teacher in context (cross-size)."""
    e = cfg.experience
    base = first["rates"][BASE]
    in_context = {n: cells[n, plan.methods[0], plan.seeds[0]]["rates"][IN_CONTEXT] for n in range(len(chosen))}
    methods = [m for m in METHODS if any(k[1] == m for k in cells)]
    seeds = {m: sorted({s for (_, m2, s) in cells if m2 == m}) for m in methods}
    runs = {m: [cells[k] for k in sorted(cells) if k[1] == m] for m in methods}  # context by context, seed by seed

    def student_rate(r: dict) -> float:  # math and games name it alike: "<method> student, without the prompt"
        return r["rates"][student_name(r["method"])]

    by_method = {m: [student_rate(r) for r in runs[m]] for m in methods}
    ood = {}
    scored = {m: [r["ood"]["instructions"] for r in runs[m] if "instructions" in r.get("ood", {})] for m in methods}
    if plan.ood and any(scored.values()):  # a run made with --no-ood has no scores
        ood["base"] = next(x for v in scored.values() for x in v)["base"]
        ood |= {m: [x["student"] for x in v] for m, v in scored.items() if v}
    teacher_without, teacher = teacher_scores(cfg, plan, folder, chosen)
    results = {
        "task": e.task,
        "student": cfg.model.student,
        "teacher": cfg.model.teacher,
        "extracted_by": e.model or cfg.model.student,
        "selection": plan.selection,
        "contexts": [  # the text too: a rerun extraction elsewhere may sample other lessons
            {"seed": c.seed, "step": c.step, "validation": c.validation, "tokens": c.tokens, "text": c.context}
            for c in chosen
        ],
        "test": first["test"],
        "seeds": sorted({s for (_, _, s) in cells}),
        "seeds_by_method": seeds,
        "checkpoint": {
            "rule": "last checkpoint" if plan.checkpoint == "last" else first["checkpoint"]["rule"],
            "steps": {f"{n}/{m}/seed{s}": r["checkpoint"]["step"] for (n, m, s), r in cells.items()},
        },
        "base": base,
        "in_context": [in_context[n] for n in range(len(chosen))],
        "teacher_without": teacher_without,
        "teacher_in_context": teacher,
        "students": by_method,
        "ood": ood,
        "runs": {f"{n}/{m}/seed{s}": r["run_dir"] for (n, m, s), r in cells.items()},
        "software": software(),
    }
    return results


def _finished_beside(
    cfg: Config, plan: Plan, folder: Path, chosen: list[Candidate], named: dict, first: dict
) -> dict[tuple[int, str, int], dict]:
    """Finished runs of the chosen contexts that this invocation did not name (another method, another seed) but
    that were made with exactly these settings, test set and checkpoint rule: the table shows every run the folder
    holds for them, so `--methods offpolicy` after `--methods opcd` does not leave an off-policy-only table behind.
    Anything else there (other settings, an unreadable config) is left out, not refused: this command did not ask
    for it."""
    name = _run_name_pattern(plan.checkpoint)
    found = {}
    for n, candidate in enumerate(chosen):
        for done in sorted((folder / f"context-{context_digest(candidate.context)}").glob("*/results.json")):
            run = done.parent
            match = name.fullmatch(run.name)
            if not match:
                continue
            method, seed = match[1], int(match[2])
            if (n, method, seed) in named or not (run / "config.toml").is_file():
                continue
            wanted = run_config(cfg, candidate.context, method, seed, run, plan.checkpoint).to_dict()
            try:
                made = load_config(run / "config.toml", []).to_dict()
                result = json.loads(done.read_text())
            except (OpcdError, ValueError):
                continue
            if made != wanted or result.get("test") != first["test"]:
                continue
            if result.get("checkpoint", {}).get("rule") != first["checkpoint"]["rule"]:
                continue
            found[n, method, seed] = result
    return found


def write_per_prompt(cfg: Config, pool: list[Candidate], seed: int) -> Path:
    """A training file where every problem carries its own context, drawn at random from the pool (math), and the
    training config for it (`per-prompt.toml`: each context in the task's in-context wrapper on the teacher's side)."""
    if cfg.experience.task != "math":
        raise OpcdError("--per-prompt writes a prompts file, which games do not have (their prompts are game turns)")
    rng = random.Random(seed)
    rows = [
        {**row, "context": rng.choice(pool).context} for _, row in read_jsonl(resolve_path(cfg.experience.problems))
    ]
    out = Path(cfg.experience.dir) / "per-prompt.jsonl"
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    train_cfg = run_config(cfg, "", "opcd", cfg.train.seed, Path(cfg.experience.dir) / "per-prompt-run")
    train_cfg = dataclasses.replace(train_cfg, data=dataclasses.replace(train_cfg.data, prompts=str(out)))
    save_config(train_cfg, out.with_suffix(".toml"))
    return out
