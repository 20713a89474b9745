"""The `opcd` command's options that several subcommands share, and the examples each `--help` ends with."""

from __future__ import annotations

import argparse

RESUME_MODES = ("always", "if-possible")


def bare_resume(argv: list[str]) -> list[str]:
    """`--resume` with no mode before an override (`--resume train.steps=40`) means `--resume=always`: argparse
    would otherwise read the override as the mode."""
    return [
        "--resume=always" if a == "--resume" and (i + 1 == len(argv) or argv[i + 1] not in RESUME_MODES) else a
        for i, a in enumerate(argv)
    ]


EXAMPLES = {
    "train": [
        "opcd train configs/system_prompt.toml train.lr=5e-6 train.run_dir=runs/fr",
        "opcd train configs/system_prompt.toml train.run_dir=runs/fr train.steps=40 --resume",
    ],
    "prepare": [
        "opcd prepare qwen2.5-coder-0.5b-instruct",
        "opcd prepare smollm2-135m-instruct qwen2.5-coder-1.5b-instruct",
    ],
    "distill-prompt": [
        "opcd distill-prompt --system-prompt 'Always answer in French.' --check language:fr --run-dir runs/fr",
        "opcd distill-prompt --system-prompt-file persona.txt --prompts prompts.parquet --test-prompts test.parquet",
    ],
    "export": [
        "opcd export runs/distill --out models/persona",
        "opcd export runs/lora --merge-lora --push-to-hub me/qwen-persona",
    ],
    "eval": [
        "opcd eval qwen2.5-coder-0.5b-instruct --context 'Answer in French.' --context-side both --check language:fr",
        "opcd eval runs/fr/checkpoints/step-000020/model --check language:fr --sampling greedy --out fr.json",
    ],
    "experience": [
        "opcd experience run configs/experience_math.toml",
        "opcd experience extract configs/experience_sokoban.toml",
    ],
    "extract": [
        "opcd experience extract configs/experience_math.toml",
        "opcd experience extract configs/experience_frozenlake.toml experience.seeds=3",
    ],
    "select": [
        "opcd experience select configs/experience_math.toml --how best",
        "opcd experience select configs/experience_math.toml --how random --count 3 --seed 1",
    ],
    "consolidate": [
        "opcd experience consolidate configs/experience_math.toml --seeds 0 1 --test-n 40",
        "opcd experience consolidate configs/experience_sokoban.toml --methods opcd --checkpoint last --out runs/sok",
    ],
    "run": [
        "opcd experience run configs/experience_math.toml",
        "opcd experience run configs/experience_frozenlake.toml --seeds 0",
    ],
    "demo": ["opcd demo", "opcd demo --run-dir runs/demo2 train.steps=10"],
}


def command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with two examples."""
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in EXAMPLES[name])
    return sub.add_parser(
        name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def add_eval_args(p: argparse.ArgumentParser, sampling: str) -> None:
    p.add_argument(
        "--check",
        action="append",
        metavar="SPEC",
        help="checker (starts_with:Arr!, language:fr, ifeval:punctuation:no_comma, ...; "
        "repeat to require several) or grader (number, choice, yes_no, math); distill-prompt without it measures "
        "the context gap only",
    )
    p.add_argument(
        "--sampling",
        choices=["greedy", "paper"],
        default=sampling,
        help=f"greedy, or the paper's T=1.0, top-p 0.95, top-k 20 (default: {sampling})",
    )
    p.add_argument("--max-new-tokens", type=int, default=0, help="evaluation budget (default 48 greedy, 512 paper)")
    p.add_argument("--no-ood", action="store_true", help="skip the out-of-distribution suites")
    p.add_argument(
        "--gsm8k", type=int, default=None, help="held-out GSM8K problems in the OOD check (default 100; 0: none)"
    )


def add_selection_args(p, consolidating: bool) -> None:
    p.add_argument("config", help="TOML config with an [experience] section (see configs/experience_*.toml)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. experience.seeds=3")
    p.add_argument("--how", choices=["best", "random"], default="best", help="best on validation, or random ones")
    p.add_argument("--count", type=int, default=3, help="random: how many contexts (mean ± std over them)")
    p.add_argument("--seed", type=int, default=0, help="random: which ones")
    if consolidating:
        p.add_argument(
            "--methods", nargs="+", default=["offpolicy", "opcd"], choices=["offpolicy", "opcd"],
            help="which distillations to run (default both)",
        )  # fmt: skip
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
        p.add_argument(
            "--test-n", type=int, default=40, help="math: the first problems of experience.test (GSM8K unless set); "
            "games: test environments 0..N-1",
        )  # fmt: skip
        p.add_argument("--no-ood", action="store_true", help="skip the instruction-following check")
        p.add_argument(
            "--checkpoint",
            choices=["last", "validation"],
            default="validation",
            help="report the best checkpoint on the validation split (default: the paper's rule, but chosen on "
            "validation, not test; checkpoints every train.save_every steps, 2 where that is 0), or the last one",
        )
        p.add_argument(
            "--out",
            default="",
            help="folder for the runs and the table (default DIR/consolidate); another one keeps runs with other "
            "settings (a longer budget, another lr) beside the first",
        )
