"""Consolidation: move a selected experience into the weights, and compare with the paper's baselines.

For every selected context, every method (`offpolicy`, `opcd`) and every training seed, one distillation run: the
teacher is the frozen model (or the larger `model.teacher`) with the experience in the in-context wrapper, the
student sees the bare problem (math) or game turn. Base and In-Context (the student model *with* the experience in
its prompt) are measured on the same test set; for a cross-size teacher, the teacher with its own experience too.
Math reuses `distill_prompt` (test: the GSM8K subset); games play the fixed test environments.

Each run goes into its own process (a long sweep in one process keeps growing in memory here) and its own run
directory under `DIR/consolidate/`, so rerunning the command resumes: finished runs are read back, not redone.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import re
import signal
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from opcd import models
from opcd.config import Config, DataConfig
from opcd.distill import (
    METHOD_NAMES,
    OOD_DEFAULT,
    EvalPlan,
    _cached,
    best_checkpoint,
    distill_prompt,
    evaluate_ood,
    write_atomic,
)
from opcd.errors import OpcdError
from opcd.experience import NO_CONTEXT, WRAPPERS, Candidate, greedy, load_pool, read_json, select, template
from opcd.versions import software

METHODS = ("offpolicy", "opcd")
LABELS = {"offpolicy": "Off-policy CD", "opcd": "OPCD"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to consolidate and how to test it."""

    selection: str = "best"  # best | random
    count: int = 3  # random: contexts drawn from the pool
    selection_seed: int = 0
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1)  # training seeds
    test_n: int = 40  # math: GSM8K test problems; games: test environments 0..N-1
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


def _ood_suites(plan: Plan) -> dict:
    return {"instructions": OOD_DEFAULT["instructions"]} if plan.ood else {}


def eval_plan(cfg: Config, plan: Plan, folder: Path) -> EvalPlan:
    by_validation = plan.checkpoint == "validation"
    return EvalPlan(
        scorer=("number",),
        test_prompts="opcd:gsm8k_test",
        test_max=plan.test_n,
        validation_prompts=cfg.experience.validation if by_validation else "",
        validation_max=cfg.experience.validation_max if by_validation else 0,
        rollout=greedy(cfg.experience.eval_tokens),
        ood=_ood_suites(plan),
        keep_weights=False,
        base_cache=str(folder / "base"),
    )


def distill_game(cfg: Config, plan: Plan, folder: Path, progress: bool = True) -> dict:
    """Base / In-Context / student success on the test environments, plus instruction following."""
    from opcd.config import validate
    from opcd.data import shared_context
    from opcd.episodes import game_renderer, success_rate
    from opcd.train import check_resumable, train

    began = time.time()
    validate(cfg)
    run = Path(cfg.train.run_dir)
    check_resumable(run, cfg)
    game, e = cfg.experience.task, cfg.experience
    tokenizer = models.load_tokenizer(cfg.model.student)
    renderer = game_renderer(tokenizer, cfg.data.user_template)
    context = shared_context(cfg.data)
    key = {
        "model": cfg.model.student,
        "game": game,
        "n": plan.test_n,
        "tokens": e.eval_tokens,
        "dtype": cfg.model.dtype,
        "wrapper": cfg.data.user_template,
    }

    def rate(model_path: str, with_context: bool, first: int = 0, n: int = plan.test_n, who: str = "") -> dict:
        model = models.load_model(model_path, cfg.model.dtype, cfg.model.device)
        boards = "validation" if first else "test"
        r, episodes = success_rate(
            model,
            tokenizer,
            renderer,
            game,
            n,
            e.eval_tokens,
            cfg.model.dtype,
            context if with_context else None,
            first,
            desc=f"{who}, {n} {boards} boards" if progress else None,
        )
        return {"rate": r, "n": n, "turns": sum(len(x.turns) for x in episodes) / len(episodes)}

    base_dir = folder / "base"
    base = {
        "without": _cached(base_dir, "game-base", key, lambda: rate(cfg.model.student, False, who="base")),
        "with": _cached(
            base_dir,
            "game-in-context",
            {**key, "context": context},
            lambda: rate(cfg.model.student, True, who="in-context"),
        ),
    }
    ood_plan = EvalPlan(scorer=("number",), ood=_ood_suites(plan))
    ood_key = {"model": cfg.model.student, "ood": str(ood_plan.ood), "dtype": cfg.model.dtype}
    base_ood = _cached(base_dir, "base-ood", ood_key, lambda: evaluate_ood(cfg.model.student, cfg, ood_plan, renderer))
    run = train(cfg, resume=True, progress=progress)
    step, path, selection = _game_checkpoint(run, cfg, plan, key, rate)
    student_key = {**key, "checkpoint": str(path), "mtime": (path / "model").stat().st_mtime}
    student = _cached(
        run / "eval", "game-student", student_key, lambda: rate(str(path / "model"), False, who="student")
    )
    student_ood = _cached(
        run / "eval",
        "student-ood",
        {**ood_key, **student_key},
        lambda: evaluate_ood(str(path / "model"), cfg, ood_plan, renderer),
    )
    results = {
        "model": cfg.model.student,
        "method": cfg.loss.mode,
        "run_dir": str(run),
        "context": context,
        "metric": "success",
        "test": {"prompts": f"{game} environments 0..{plan.test_n - 1}", "n": plan.test_n},
        "checkpoint": {"step": step, **selection},
        "rates": {
            "Base, without the prompt": base["without"]["rate"],
            "In-context: base with the prompt": base["with"]["rate"],
            f"{METHOD_NAMES[cfg.loss.mode]} student, without the prompt": student["rate"],
        },
        "ood": {
            n: {"base": base_ood[n]["rate"], "student": student_ood[n]["rate"], "n": student_ood[n]["n"]}
            for n in student_ood
        },
        "seconds": time.time() - began,
        "software": software(),
    }
    write_atomic(run / "results.json", json.dumps(results, indent=1))
    import shutil

    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return results


def _game_checkpoint(run: Path, cfg: Config, plan: Plan, key: dict, rate) -> tuple[int, Path, dict]:
    """The last checkpoint, or the best on the validation environments (ties: the later one)."""
    from opcd.checkpoint import list_checkpoints
    from opcd.episodes import VALIDATION_SEEDS

    found = list_checkpoints(run)
    if not found:
        raise OpcdError(f"{run} has no checkpoint to evaluate")
    if plan.checkpoint == "last":
        step, path = found[-1]
        return step, path, {"rule": "last checkpoint"}
    n = cfg.experience.validation_max

    def score(step: int, path: Path) -> float:
        at = {**key, "first": VALIDATION_SEEDS, "n": n}  # the test count in `key` is replaced
        at |= {"checkpoint": str(path), "mtime": (path / "model").stat().st_mtime}
        return _cached(
            run / "eval",
            f"validation-{step}",
            at,
            lambda: rate(str(path / "model"), False, VALIDATION_SEEDS, n, who=f"step {step}"),
        )["rate"]

    best, path, rates = best_checkpoint(found, score)
    where = f"environments {VALIDATION_SEEDS}..{VALIDATION_SEEDS + n - 1}"
    return best, path, {"rule": f"best on validation ({n} {where})", "validation_rates": rates}


ERROR = "error.txt"


def _cell(cfg_dict: dict, plan: Plan, folder: str, progress: bool) -> None:
    """One distillation run, in its own process; a refusal is handed to the parent as one line in `error.txt`."""
    import sys

    from opcd.config import _build

    cfg = _build(cfg_dict, "consolidation cell")
    try:
        if cfg.experience.task == "math":
            distill_prompt(cfg, eval_plan(cfg, plan, Path(folder)), progress=progress)
        else:
            distill_game(cfg, plan, Path(folder), progress=progress)
    except OpcdError as e:
        write_atomic(Path(cfg.train.run_dir) / ERROR, str(e))
        sys.exit(2)


def _run_cell(cfg: Config, plan: Plan, folder: Path, progress: bool) -> dict:
    from opcd.train import _changed

    run = Path(cfg.train.run_dir)
    done = run / "results.json"
    if (run / "config.toml").is_file():  # a finished (or started) run is reused only for exactly this config
        from opcd.config import load_config

        changed = _changed(load_config(run / "config.toml", []).to_dict(), cfg.to_dict())
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
            raise OpcdError(_cell_failure(run, process.exitcode))
    return json.loads(done.read_text())


def _cell_failure(run: Path, exitcode: int | None) -> str:
    if exitcode == -signal.SIGKILL:
        return (
            f"consolidation run {run} was killed (SIGKILL, most often the out-of-memory killer): lower "
            "train.micro_batch_size or run one job at a time, then rerun the same command to continue"
        )
    return f"consolidation run {run} failed (exit code {exitcode}); see its output above"


def _teacher_in_context(cfg: Config, plan: Plan, folder: Path, contexts: list[Candidate]) -> list[float] | None:
    """Cross-size: the larger model with its own experience on the same test set."""
    teacher = cfg.model.teacher
    if teacher in ("frozen", "live", "ema") or teacher == cfg.model.student:
        return None
    rates = []
    for c in contexts:
        cell = run_config(cfg, c.context, "opcd", 0, folder / "unused")
        t_cfg = dataclasses.replace(cell, model=dataclasses.replace(cell.model, student=teacher))
        if cfg.experience.task == "math":
            from opcd.data import load_examples
            from opcd.distill import evaluate_model
            from opcd.prompts import PromptRenderer
            from opcd.tasks import build_scorer

            ep = eval_plan(cfg, plan, folder)
            data = DataConfig(**{**asdict(t_cfg.data), "prompts": ep.test_prompts, "max_prompts": ep.test_max})
            tok = models.load_tokenizer(teacher)
            key = {"model": teacher, "context": c.context, "n": plan.test_n, "tokens": cfg.experience.eval_tokens}
            key |= {"wrapper": _wrapper(cfg), "dtype": cfg.model.dtype}
            rates.append(
                _cached(
                    folder / "base",
                    "teacher-in-context",
                    key,
                    lambda t_cfg=t_cfg, data=data, tok=tok, ep=ep: evaluate_model(
                        teacher,
                        t_cfg,
                        ep,
                        PromptRenderer(tok, t_cfg.data),
                        load_examples(data),
                        build_scorer(["number"]),
                        with_context=True,
                        label="teacher with its experience",
                    )["test"]["rate"],
                )
            )
        else:
            from opcd.episodes import game_renderer, success_rate

            tok = models.load_tokenizer(teacher)
            key = {"model": teacher, "context": c.context, "n": plan.test_n, "game": cfg.experience.task}
            key |= {"wrapper": _wrapper(cfg), "dtype": cfg.model.dtype, "tokens": cfg.experience.eval_tokens}

            def measure(c=c, tok=tok):
                model = models.load_model(teacher, cfg.model.dtype, cfg.model.device)
                renderer = game_renderer(tok, _wrapper(cfg))
                return success_rate(
                    model,
                    tok,
                    renderer,
                    cfg.experience.task,
                    plan.test_n,
                    cfg.experience.eval_tokens,
                    cfg.model.dtype,
                    c.context,
                    desc=f"teacher with its experience, {plan.test_n} test boards",
                )[0]

            rates.append(_cached(folder / "base", "teacher-in-context", key, measure))
    return rates


def _digest(text: str) -> str:
    """Runs are filed under their context's digest: another selection of the same context reuses them."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _mean_std(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def check_plan(cfg: Config, plan: Plan) -> None:
    """Refuse a plan that cannot run, before any extraction or training."""
    from opcd.episodes import VALIDATION_SEEDS

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
    if e.task != "math" and plan.test_n > VALIDATION_SEEDS:
        raise OpcdError(f"--test-n {plan.test_n} reaches the validation environments ({VALIDATION_SEEDS}+): use fewer")


def consolidate(cfg: Config, plan: Plan, progress: bool = True) -> dict:
    """Select, distill every (context, method, seed), and write the comparison table."""
    began = time.time()
    e = cfg.experience
    folder = Path(plan.out) if plan.out else Path(e.dir) / "consolidate"
    check_plan(cfg, plan)
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
                run_dir = folder / f"context-{_digest(candidate.context)}" / _run_name(method, seed, plan.checkpoint)
                cell = run_config(cfg, candidate.context, method, seed, run_dir, plan.checkpoint)
                cells[n, method, seed] = _run_cell(cell, plan, folder, progress)
    first = cells[0, plan.methods[0], plan.seeds[0]]
    cells |= _finished_beside(cfg, plan, folder, chosen, cells, first)
    rules = {r["checkpoint"]["rule"] for r in cells.values()}
    if plan.checkpoint == "validation" and len(rules) > 1:  # a rerun after experience.validation* changed
        raise OpcdError(
            f"the runs under {folder} chose their checkpoints on different validation splits ({'; '.join(rules)}): "
            "delete the *-by-validation runs made with the old split, or put the new ones beside them with --out"
        )
    base = first["rates"]["Base, without the prompt"]
    in_context = {
        n: cells[n, plan.methods[0], plan.seeds[0]]["rates"]["In-context: base with the prompt"]
        for n in range(len(chosen))
    }
    methods = [m for m in METHODS if any(k[1] == m for k in cells)]
    seeds = {m: sorted({s for (_, m2, s) in cells if m2 == m}) for m in methods}
    runs = {m: [cells[k] for k in sorted(cells) if k[1] == m] for m in methods}  # context by context, seed by seed

    def student_rate(r: dict) -> float:  # math and games name it alike: "<method> student, without the prompt"
        return r["rates"][f"{METHOD_NAMES[r['method']]} student, without the prompt"]

    by_method = {m: [student_rate(r) for r in runs[m]] for m in methods}
    ood = {}
    scored = {m: [r["ood"]["instructions"] for r in runs[m] if "instructions" in r.get("ood", {})] for m in methods}
    if plan.ood and any(scored.values()):  # a run made with --no-ood has no scores
        ood["base"] = next(x for v in scored.values() for x in v)["base"]
        ood |= {m: [x["student"] for x in v] for m, v in scored.items() if v}
    teacher = _teacher_in_context(cfg, plan, folder, chosen)
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
        "teacher_in_context": teacher,
        "students": by_method,
        "ood": ood,
        "seconds": time.time() - began,
        "runs": {f"{n}/{m}/seed{s}": r["run_dir"] for (n, m, s), r in cells.items()},
        "software": software(),
    }
    name = f"results-{plan.selection}{suffix}"  # each rule keeps its own table
    write_atomic(folder / f"{name}.json", json.dumps(results, indent=1))
    write_atomic(folder / f"{name}.md", table(results))
    _plot(results, folder / f"{name}.png")
    return results


def _finished_beside(
    cfg: Config, plan: Plan, folder: Path, chosen: list[Candidate], named: dict, first: dict
) -> dict[tuple[int, str, int], dict]:
    """Finished runs of the chosen contexts that this invocation did not name (another method, another seed) but
    that were made with exactly these settings, test set and checkpoint rule: the table shows every run the folder
    holds for them, so `--methods offpolicy` after `--methods opcd` does not leave an off-policy-only table behind.
    Anything else there (other settings, an unreadable config) is left out, not refused: this command did not ask
    for it."""
    from opcd.config import load_config

    name = _run_name_pattern(plan.checkpoint)
    found = {}
    for n, candidate in enumerate(chosen):
        for done in sorted((folder / f"context-{_digest(candidate.context)}").glob("*/results.json")):
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


def _seeds(r: dict) -> str:
    by_method = r.get("seeds_by_method") or {}
    if len({tuple(v) for v in by_method.values()}) > 1:
        return ", ".join(f"{LABELS[m]} {v}" for m, v in by_method.items())
    return str(r["seeds"])


def table(r: dict) -> str:
    metric = "accuracy" if r["task"] == "math" else "success"
    cols = (
        ["Base", "In-Context"]
        + (["Teacher in-context"] if r["teacher_in_context"] else [])
        + [LABELS[m] for m in r["students"]]
    )
    values = [_mean_std([r["base"]]), _mean_std(r["in_context"])]
    if r["teacher_in_context"]:
        values.append(_mean_std(r["teacher_in_context"]))
    values += [_mean_std(v) for v in r["students"].values()]
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
    for x, (m, e) in enumerate(zip(means, errs, strict=True)):
        ax.text(x, m + e + 2, f"{m:.1f}", ha="center", fontsize=8)


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (
        ["Base", "In-Context"]
        + (["Teacher\nin-context"] if r["teacher_in_context"] else [])
        + [LABELS[m] for m in r["students"]]
    )
    series = (
        [[r["base"]], r["in_context"]]
        + ([r["teacher_in_context"]] if r["teacher_in_context"] else [])
        + list(r["students"].values())
    )
    ood = r.get("ood") or {}
    fig, axes = plt.subplots(1, 2 if ood else 1, figsize=(10, 3.8) if ood else (6.5, 3.8), squeeze=False)
    colors = ["#999", "#4a90d9", "#7fb069", "#e07b39", "#c84c4c"][: len(names)]
    student_color = dict(zip(r["students"], colors[len(names) - len(r["students"]) :], strict=True))
    _bars(axes[0][0], names, series, colors)
    axes[0][0].set_ylabel(("accuracy" if r["task"] == "math" else "success") + " (%)")
    axes[0][0].set_title(f"{r['task']} test", fontsize=10)
    if ood:
        methods = [m for m in r["students"] if m in ood]
        _bars(
            axes[0][1],
            ["Base"] + [LABELS[m] for m in methods],
            [[ood["base"]]] + [ood[m] for m in methods],
            [colors[0]] + [student_color[m] for m in methods],
        )
        axes[0][1].set_ylabel("prompt-level strict (%)")
        axes[0][1].set_title("out of distribution: instruction following", fontsize=10)
    fig.suptitle(f"Experience consolidated into {r['student']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
