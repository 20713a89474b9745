"""What the 1 MB mmap threshold every `opcd` command sets costs sampling on this CPU, and whether a static cache helps.

Every setting runs in its own process: the packaged Qwen2.5-Coder-0.5B samples the same 8 GSM8K test prompts
(temperature 0.6, bf16 autocast over fp32 weights, the same seeds, `--tokens` new tokens) `--rounds` times in a row, as
a training run samples one step after another. Per round it records wall, user and system (kernel) seconds and minor
page faults; per setting, peak resident memory. Settings:

- `dynamic, mmap 1 MB`: transformers' default (dynamic) key/value cache under the 1 MB mmap threshold that
  `models.limit_heap_growth` sets (every block of 1 MB or more is mapped when allocated and unmapped when freed);
- `dynamic, glibc default`: the same cache, glibc left alone (`OPCD_KEEP_MALLOC=1`);
- `static, mmap 1 MB`: a key/value cache allocated once per `generate` call, under the 1 MB threshold.

    .venv/bin/python benchmarks/allocator.py                        # 8 prompts x 512 tokens, 2 rounds (about 10 min)
    .venv/bin/python benchmarks/allocator.py --tokens 64 --rounds 1 # a quick look

Writes `benchmarks/results/allocator.{md,json,png}`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "dynamic, mmap 1 MB": {"cache": "dynamic", "env": {}},
    "dynamic, glibc default": {"cache": "dynamic", "env": {"OPCD_KEEP_MALLOC": "1"}},
    "static, mmap 1 MB": {"cache": "static", "env": {}},
}


def child(setting: str, tokens: int, rounds: int) -> None:
    import torch

    from opcd.config import DataConfig, RolloutConfig
    from opcd.core import models
    from opcd.core.data import read_jsonl, resolve_path
    from opcd.core.prompts import PromptRenderer
    from opcd.core.rollout import HFSampler, eos_ids

    models.limit_heap_growth()  # as every opcd command does (a no-op under OPCD_KEEP_MALLOC=1)
    torch.set_num_threads(os.cpu_count() or 1)
    name = "qwen2.5-coder-0.5b-instruct"
    tokenizer = models.load_tokenizer(name)
    model = models.load_model(name, "fp32")
    renderer = PromptRenderer(tokenizer, DataConfig())  # the plain chat template, as the student sees prompts
    rows = [row for _, row in read_jsonl(resolve_path("opcd:gsm8k_test"))][:8]
    prompts = [renderer.student_ids([{"role": "user", "content": r["prompt"]}]) for r in rows]
    rollout = RolloutConfig(temperature=0.6, max_new_tokens=tokens)
    sampler = HFSampler(model, rollout, eos_ids(tokenizer, model), tokenizer.pad_token_id, "bf16")
    sampler.config.cache_implementation = SETTINGS[setting]["cache"]
    for r in range(rounds):
        before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = sampler.generate(prompts, seed=r)
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - began
        print(
            json.dumps(
                {
                    "setting": setting,
                    "round": r + 1,
                    "wall_s": wall,
                    "user_s": after.ru_utime - before.ru_utime,
                    "system_s": after.ru_stime - before.ru_stime,
                    "minor_faults": after.ru_minflt - before.ru_minflt,
                    "new_tokens": sum(len(t) for t, _ in out),
                    "peak_rss_gb": after.ru_maxrss / 2**20,
                }
            ),
            flush=True,
        )


def run(setting: str, tokens: int, rounds: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "OPCD_KEEP_MALLOC" and not k.startswith("MALLOC_")}
    env |= SETTINGS[setting]["env"]
    cmd = [sys.executable, __file__, "--child", setting, "--tokens", str(tokens), "--rounds", str(rounds)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"allocator benchmark: setting {setting!r} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def table(rows: list[dict]) -> str:
    lines = [
        "| Setting | Round | Wall s | User s | System s | Minor faults | New tokens | Tokens/s | Peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['round']} | {r['wall_s']:.1f} | {r['user_s']:.1f} | {r['system_s']:.1f} | "
            f"{r['minor_faults']:,} | {r['new_tokens']} | {r['new_tokens'] / r['wall_s']:.1f} | "
            f"{r['peak_rss_gb']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting]
        rounds = [r["round"] for r in mine]
        axes[0].plot(rounds, [r["new_tokens"] / r["wall_s"] for r in mine], marker="o", label=setting)
        axes[1].plot(rounds, [r["system_s"] for r in mine], marker="o", label=setting)
    axes[0].set(xlabel="round", ylabel="new tokens / s", title="Sampling speed")
    axes[1].set(xlabel="round", ylabel="seconds in the kernel", title="System time per round")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tokens, args.rounds)
        return
    rows = []
    for setting in SETTINGS:
        print(f"{setting}: sampling 8 prompts x {args.tokens} tokens, {args.rounds} rounds", flush=True)
        rows += run(setting, args.tokens, args.rounds)
        print(table([r for r in rows if r["setting"] == setting]), flush=True)
    from opcd.io import write_text as write_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    header = f"8 GSM8K prompts x {args.tokens} new tokens, temperature 0.6, {args.rounds} rounds per process\n\n"
    write_atomic(RESULTS / "allocator.md", header + table(rows) + "\n")
    write_atomic(RESULTS / "allocator.json", json.dumps(rows, indent=2) + "\n")
    plot(rows, RESULTS / "allocator.png")
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
