"""Why a math experience helps or hurts: the extracting model's validation answers with no context, the best and the
worst context of an extraction at the test budget, and the worst again at twice it.

For each (context, token budget) it prints greedy accuracy on the validation problems, the share of answers cut off by
the budget, their mean length, and the share of answers that mention the experience. A context that hurts only
because the wrapper's "say which parts of the experience you use" makes answers longer recovers at twice the budget; a
context whose items derail the model does not. Writes `results/experience_answers.{md,json}`.

    python benchmarks/experience_answers.py configs/experience_math.toml     # after `opcd experience extract`
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opcd.config import load_config  # noqa: E402
from opcd.core import models  # noqa: E402
from opcd.experience import MathTask, load_pool, select  # noqa: E402
from opcd.io import write_text as write_atomic  # noqa: E402


def measure(task: MathTask, model, tokenizer, context: str | None, budget: int) -> dict:
    texts, finished = task.answers(model, context, budget, desc=f"budget {budget}")
    n = len(texts)
    return {
        "accuracy": sum(task.correct(texts)) / n,
        "truncated": 1 - sum(finished) / n,
        "mean_tokens": sum(len(tokenizer(t)["input_ids"]) for t in texts) / n,
        "mentions_experience": sum("experience" in t.lower() for t in texts) / n,
        "first_answer": texts[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="an experience config whose extraction has run (task = math)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "experience_answers"))
    args = parser.parse_args()
    cfg = load_config(Path(args.config), [])
    e = cfg.experience
    if e.task != "math":
        raise SystemExit(f"{args.config}: experience.task is '{e.task}'; this diagnostic reads math answers")
    name = e.model or cfg.model.student
    pool = [c for c in load_pool(Path(e.dir), e.token_budget) if c.validation is not None]
    [best] = select(pool, "best")  # the context consolidation distils
    worst = min(pool, key=lambda c: (c.validation, -c.tokens))
    tokenizer = models.load_tokenizer(name)
    model = models.load_model(name, cfg.model.dtype, cfg.model.device)
    task = MathTask(cfg, tokenizer)
    rows = []
    for label, candidate in (("none", None), ("best", best), ("worst", worst)):
        for budget in (e.eval_tokens, 2 * e.eval_tokens) if label == "worst" else (e.eval_tokens,):
            row = {"context": label, "budget": budget}
            if candidate is not None:
                row |= {"which": candidate.name, "items": len(candidate.items), "tokens": candidate.tokens}
            row |= measure(task, model, tokenizer, candidate and candidate.context, budget)
            rows.append(row)
            print({k: v for k, v in row.items() if k != "first_answer"}, flush=True)
    lines = [
        f"{name}, {len(task.validation)} validation problems of {e.validation}, greedy; contexts from {e.dir}.",
        "",
        "| Context | Budget | Accuracy | Cut off | Mean answer tokens | Mentions the experience |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        which = r["context"] if r["context"] == "none" else f"{r['context']} ({r['which']}, {r['tokens']} tokens)"
        lines.append(
            f"| {which} | {r['budget']} | {100 * r['accuracy']:.1f} % | {100 * r['truncated']:.0f} % | "
            f"{r['mean_tokens']:.0f} | {100 * r['mentions_experience']:.0f} % |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".md"), table)
    write_atomic(out.with_suffix(".json"), json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
