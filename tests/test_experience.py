"""Experiential knowledge: lesson parsing, accumulation under a budget, the seed files, the pool, selection, and
extraction / game rollouts / game training on a tiny random model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers

from opcd.cli import main
from opcd.config import load_config, validate
from opcd.errors import OpcdError
from opcd.experience import (
    ITEM_MARK,
    Record,
    accumulate,
    extract,
    load_pool,
    parse_items,
    read_records,
    render,
    sampled,
    seed_file,
    select,
    write_records,
)


def words(text: str) -> int:
    return len(text.split())


def test_lessons_are_the_item_lines_after_the_reasoning():
    answer = (
        f"<think>\n{ITEM_MARK} a thought, not a lesson\n</think>\nHere are my lessons:\n"
        f"{ITEM_MARK} Check units before adding.\nsome chatter\n  {ITEM_MARK}   Reread the question.  \n{ITEM_MARK}\n"
    )
    assert parse_items(answer) == ["Check units before adding.", "Reread the question."]
    assert parse_items("no lessons here") == []
    bent = "EXPERIENCE ITEM: Plain.\n1. - Experience item: Numbered.\n**Experience Item:** Bold.\n- experience item one"
    assert parse_items(bent) == ["Plain.", "Numbered.", "Bold."]
    echoed = "Sure, each line starting with '- EXPERIENCE ITEM:' and nothing else."
    assert parse_items(echoed) == []  # an echoed instruction is not a lesson


def test_a_lesson_cut_by_the_budget_loses_its_unfinished_item_and_keeps_at_most_the_limit():
    from opcd.experience import lesson_items

    answer = f"{ITEM_MARK} One.\n{ITEM_MARK} Two.\n{ITEM_MARK} Three is cut mid"
    assert lesson_items(answer, finished=False, limit=0) == ["One.", "Two."]
    assert lesson_items(answer, finished=True, limit=0) == ["One.", "Two.", "Three is cut mid"]
    assert lesson_items(answer, finished=True, limit=2) == ["One.", "Two."]


def test_items_accumulate_in_order_and_the_oldest_whole_items_leave_over_budget():
    items, dropped = accumulate([], ["one two", "three four"], budget=100, count_tokens=words)
    assert items == ["one two", "three four"] and dropped == []
    items, dropped = accumulate(items, ["three four", "five six"], budget=100, count_tokens=words)
    assert items == ["one two", "three four", "five six"]  # a repeated item is not added twice
    budget = words(render(["three four", "five six", "seven eight"]))
    items, dropped = accumulate(items, ["seven eight"], budget=budget, count_tokens=words)
    assert items == ["three four", "five six", "seven eight"] and dropped == ["one two"]
    items, dropped = accumulate(["a", "b"], ["x " * 50], budget=10, count_tokens=words)
    assert items == ["a", "b"] and dropped == ["x " * 50]  # an item alone over the budget leaves alone


def _record(seed, step, items, validation=0.5, tokens=None):
    return Record(
        seed,
        step,
        f"problem {step}",
        "trace",
        "lesson",
        None,
        items[-1:],
        items,
        [],
        tokens or 3 * len(items),
        validation,
        4,
    )


def _write_seed(folder, seed, item_lists, **kw):
    write_records(seed_file(folder, seed), [_record(seed, k, items, **kw) for k, items in enumerate(item_lists, 1)])


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures a plot function closes, kept open to look at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    return figures


def test_the_stairs_plot_draws_each_seed_on_the_whole_percent_scale(tmp_path, kept_figures):
    from opcd.experience import NO_CONTEXT, plot_stairs

    _write_seed(tmp_path, 0, [["a", "b"], ["a", "b", "c"]], validation=0.0)
    _write_seed(tmp_path, 1, [["x"]], validation=0.0625)
    (tmp_path / NO_CONTEXT).write_text(json.dumps({"validation": 0.0625}))
    assert plot_stairs(tmp_path) == tmp_path / "stairs.png" and (tmp_path / "stairs.png").stat().st_size > 0
    ax = kept_figures[-1].axes[0]
    assert ax.get_ylim() == (-2, 102)  # 0 against 1 of 16 stays a small step, not the whole panel
    seed0, seed1, no_context = ax.get_lines()
    assert list(seed0.get_xdata()) == [0, 2, 3] and list(seed0.get_ydata()) == [6.25, 0.0, 0.0]  # starts at no context
    assert list(seed1.get_xdata()) == [0, 1] and list(no_context.get_ydata()) == [6.25, 6.25]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed 0", "seed 1", "no context"]


def test_seed_files_round_trip_and_bad_lines_are_named(tmp_path):
    path = seed_file(tmp_path, 0)
    records = [_record(0, 1, ["a"]), _record(0, 2, ["a", "b"])]
    write_records(path, records)
    assert read_records(path) == records
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed into place

    good = path.read_text().splitlines()
    path.write_text(good[0] + "\n" + good[1][: len(good[1]) // 2] + "\n")  # a truncated last line
    with pytest.raises(OpcdError, match=r"seed-0.jsonl:2: not valid JSON .*delete this line"):
        read_records(path)
    path.write_text(good[1] + "\n")  # step 2 where step 1 belongs
    with pytest.raises(OpcdError, match="step 2 where step 1 was expected"):
        read_records(path)
    path.write_text(json.dumps({"seed": 0, "step": 1}) + "\n")
    with pytest.raises(OpcdError, match="not an experience record"):
        read_records(path)


def test_the_pool_holds_every_context_with_items_and_refuses_what_it_cannot_use(tmp_path):
    with pytest.raises(OpcdError, match="no experience files"):
        load_pool(tmp_path, 512)
    _write_seed(tmp_path, 0, [[], []])
    with pytest.raises(OpcdError, match="the experience pool is empty"):
        load_pool(tmp_path, 512)
    _write_seed(tmp_path, 0, [[], ["a"], ["a", "b"]])
    _write_seed(tmp_path, 1, [["c"]])
    pool = load_pool(tmp_path, 512)
    assert [(c.seed, c.step) for c in pool] == [(0, 2), (0, 3), (1, 1)]
    with pytest.raises(OpcdError, match=r"seed-0.jsonl:3: the context has 6 tokens, over experience.token_budget=5"):
        load_pool(tmp_path, 5)


def test_selection_takes_the_best_on_validation_or_random_ones(tmp_path):
    write_records(
        seed_file(tmp_path, 0),
        [_record(0, 1, ["a"], 0.25), _record(0, 2, ["a", "b"], 0.75), _record(0, 3, ["a", "b", "c"], 0.75)],
    )
    pool = load_pool(tmp_path, 512)
    [best] = select(pool, "best")
    assert (best.step, best.validation) == (2, 0.75)  # ties: the shorter context
    picks = select(pool, "random", count=2, seed=1)
    assert len({p.step for p in picks}) == 2 and picks == select(pool, "random", count=2, seed=1)
    with pytest.raises(OpcdError, match="asked for 4 random contexts but the pool holds 3"):
        select(pool, "random", count=4)
    unscored = [_record(0, 1, ["a"], None)]
    write_records(seed_file(tmp_path, 0), unscored)
    with pytest.raises(OpcdError, match="no candidate context has a validation score"):
        select(load_pool(tmp_path, 512), "best")


@pytest.fixture
def math_files(tmp_path):
    problems, validation = tmp_path / "problems.jsonl", tmp_path / "validation.jsonl"
    rows = [{"prompt": f"What is {a} plus {a + 1}?", "answer": str(2 * a + 1)} for a in range(1, 9)]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    validation.write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    return problems


def _extract_config(tiny_model, problems, folder, **extra):
    values = {
        "model.student": str(tiny_model),
        "model.dtype": "fp32",
        "experience.dir": str(folder),
        "experience.problems": str(problems),
        "experience.validation": str(problems.with_name("validation.jsonl")),
        "experience.validation_max": 2,
        "experience.problems_per_seed": 3,
        "experience.seeds": 2,
        "experience.solve_tokens": 4,
        "experience.lesson_tokens": 4,
        "experience.eval_tokens": 4,
        **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


def test_extraction_resumes_where_it_stopped_without_losing_or_repeating(tiny_model, math_files, tmp_path, monkeypatch):
    import opcd.experience as experience
    import opcd.experience.extraction as extraction

    # the tiny random model cannot write lessons: one item per answer, named after the (seeded) answer it came from
    monkeypatch.setattr(extraction, "lesson_items", lambda answer, finished, limit: [f"lesson on {answer!r}"])
    whole = tmp_path / "whole"
    extract(_extract_config(tiny_model, math_files, whole), progress=False)
    expected = {s: read_records(seed_file(whole, s)) for s in (0, 1)}
    assert [len(r) for r in expected.values()] == [3, 3]
    for r in expected[0]:
        assert r.trace.startswith("Input: What is") and r.validation is not None and r.validation_n == 2
        assert r.items[-len(r.new_items) :] == r.new_items and r.tokens > 0  # scored with a growing context
    assert len(expected[0][2].items) > len(expected[0][0].items)
    assert (whole / "stairs.png").stat().st_size > 0
    assert json.loads((whole / "settings.json").read_text())["software"]["transformers"] == transformers.__version__

    # the same extraction, interrupted in the middle of seed 0's second problem, then rerun
    real, calls = experience.MathTask.attempt, []

    def interrupted(self, model, index, seed):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, model, index, seed)

    parts = tmp_path / "parts"
    monkeypatch.setattr(experience.MathTask, "attempt", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(_extract_config(tiny_model, math_files, parts), progress=False)
    assert len(read_records(seed_file(parts, 0))) == 1  # the finished problem is on disk, whole
    monkeypatch.setattr(experience.MathTask, "attempt", real)
    settings = json.loads((parts / "settings.json").read_text())
    settings["software"]["transformers"] = "4.0.0"  # recorded, not compared: a resume after an upgrade goes on
    (parts / "settings.json").write_text(json.dumps(settings))
    extract(_extract_config(tiny_model, math_files, parts), progress=False)
    for s in (0, 1):
        assert [asdict(r) for r in read_records(seed_file(parts, s))] == [asdict(r) for r in expected[s]]

    # more problems per seed continue the same sequences
    extract(_extract_config(tiny_model, math_files, parts, **{"experience.problems_per_seed": 4}), progress=False)
    longer = read_records(seed_file(parts, 0))
    assert len(longer) == 4 and [asdict(r) for r in longer[:3]] == [asdict(r) for r in expected[0]]

    with pytest.raises(OpcdError, match=r"extracted with other settings \(token_budget\)"):
        extract(_extract_config(tiny_model, math_files, parts, **{"experience.token_budget": 99}), progress=False)
    with pytest.raises(OpcdError, match=r"extracted with other settings \(sampling\)"):
        extract(_extract_config(tiny_model, math_files, parts, **{"experience.temperature": 1.0}), progress=False)
    other = tmp_path / "other.jsonl"  # other problems into the same folder would mix two extractions
    other.write_text(math_files.read_text().replace("plus", "and"))
    with pytest.raises(OpcdError, match=r"extracted with other settings \(problems\)"):
        extract(
            _extract_config(
                tiny_model, other, parts, **{"experience.validation": str(math_files.with_name("validation.jsonl"))}
            ),
            progress=False,
        )
    with pytest.raises(OpcdError, match="holds 4 problems, more than experience.problems_per_seed=2"):
        extract(_extract_config(tiny_model, math_files, parts, **{"experience.problems_per_seed": 2}), progress=False)


def test_extraction_refuses_validation_problems_it_also_learns_from(tiny_model, math_files, tmp_path):
    cfg = _extract_config(tiny_model, math_files, tmp_path / "x", **{"experience.validation": str(math_files)})
    with pytest.raises(OpcdError, match="validation"):
        extract(cfg, progress=False)


def test_unknown_game_and_bad_template_fail_before_loading_a_model(tiny_model, math_files, tmp_path, capsys):
    cfg = _extract_config(tiny_model, math_files, tmp_path / "x", **{"experience.wrapper": str(math_files)})
    with pytest.raises(OpcdError, match=r"experience.wrapper: template .* lacks \{context\}, \{prompt\}"):
        extract(cfg, progress=False)
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\nstudent = "{tiny_model}"\n[experience]\ntask = "chess"\n')
    assert main(["experience", "extract", str(config)]) == 2
    assert capsys.readouterr().err.startswith("opcd: error: ") and not (tmp_path / "runs").exists()


def test_games_are_played_turn_by_turn_and_their_turns_are_training_samples(tiny_model, smol_tokenizer, capsys):
    from opcd.config import RolloutConfig
    from opcd.core import models
    from opcd.core.rollout import HFSampler, eos_ids
    from opcd.experience import WRAPPERS
    from opcd.games.episodes import episode_rollouts, game_renderer, play, turn_prompt

    model = models.load_model(str(tiny_model), "fp32")
    renderer = game_renderer(smol_tokenizer, WRAPPERS["game"])
    rollout = RolloutConfig(temperature=1.0, max_new_tokens=5)
    sampler = HFSampler(model, rollout, eos_ids(smol_tokenizer, model), smol_tokenizer.pad_token_id, "fp32")
    episodes = play(sampler, smol_tokenizer, renderer, "frozenlake", [0, 1, 2], sample_seed=3)
    assert [e.seed for e in episodes] == [0, 1, 2]
    for e in episodes:
        assert 1 <= len(e.turns) <= 5 and e.reason  # every episode ended, and says why
        assert e.turns[0].prompt == turn_prompt([], e.observations[0])
        assert len(e.observations) == len(e.turns) + 1
        assert e.trace().endswith(f"Result: {'Success' if e.success else 'Failure'}. {e.reason}")
    capsys.readouterr()
    again = play(sampler, smol_tokenizer, renderer, "frozenlake", [0, 1, 2], 3, desc="3 test boards")
    assert [[t.response for t in e.turns] for e in again] == [[t.response for t in e.turns] for e in episodes]
    assert "3 test boards" in capsys.readouterr().err  # long evaluations show a bar over the turns
    samples = episode_rollouts(renderer, episodes, "- EXPERIENCE ITEM: avoid H.")
    assert len(samples) == sum(len(e.turns) for e in episodes)
    turn_index = [k for e in episodes for k in range(len(e.turns))]
    later = [s for s, k in zip(samples, turn_index, strict=True) if k > 0]
    for s in later:  # a later turn's prompt carries the game so far
        assert "The game so far" in smol_tokenizer.decode(s.student_prompt)
    assert all("avoid H." in smol_tokenizer.decode(s.teacher_prompt) for s in samples)
    assert all("avoid H." not in smol_tokenizer.decode(s.student_prompt) for s in samples)


def test_a_game_trains_on_the_turns_of_episodes(tiny_model, tmp_path):
    from opcd.core.metrics import read_metrics
    from opcd.core.train import train
    from opcd.games.episodes import EpisodeSource, source_for

    for mode in ("opcd", "offpolicy"):
        cfg = load_config(
            None,
            [
                f"model.student={tiny_model}",
                "model.dtype=fp32",
                "data.prompts=game:frozenlake",
                "data.context=- EXPERIENCE ITEM: H is a hole; walk around it.",
                "data.placement=user",
                f"loss.mode={mode}",
                "rollout.max_new_tokens=5",
                "train.prompts_per_step=2",
                "train.steps=1",
                "train.report_to=none",
                f"train.run_dir={tmp_path / mode}",
            ],
        )
        source = source_for(cfg)
        assert isinstance(source, EpisodeSource)  # the loop gets the game from its source, not from the config
        rows = read_metrics(train(cfg, source, progress=False) / "metrics.jsonl")
        assert 1 <= rows[0]["rollout/turns"] <= 5 and 0 <= rows[0]["rollout/success"] <= 1
        assert rows[0]["loss/value"] > 0


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, smol_tokenizer):
    from tests.conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("teacher") / "model", smol_tokenizer, hidden=48, seed=1)


def _consolidation_config(task, tiny_model, math_files, folder, **extra):
    values = {
        "experience.task": task,
        "rollout.max_new_tokens": 4,
        "train.steps": 1,
        "train.prompts_per_step": 2,
        "train.report_to": "none",
        "train.save_every": 0,
        **extra,
    }
    return _extract_config(tiny_model, math_files, folder, **values)


@pytest.mark.parametrize("task", ["math", "frozenlake"])
def test_consolidation_runs_every_method_and_writes_the_table(task, tiny_model, tiny_teacher, math_files, tmp_path):
    from opcd.recipes.consolidate import Plan, consolidate

    folder = tmp_path / "exp"
    _write_seed(folder, 0, [["Add the ones first."], ["Add the ones first.", "H is a hole."]], validation=0.5)
    # cross-size: a larger tiny model with the same tokenizer teaches
    cfg = _consolidation_config(task, tiny_model, math_files, folder, **{"model.teacher": str(tiny_teacher)})
    plan = Plan(selection="random", count=2, seeds=(0,), test_n=2, ood=False, checkpoint="last")
    results = consolidate(cfg, plan, progress=False)
    assert set(results["students"]) == {"offpolicy", "opcd"}
    assert len(results["in_context"]) == 2 and all(len(v) == 2 for v in results["students"].values())
    assert len(results["teacher_in_context"]) == 2  # the teacher with the experience, same test set
    assert 0 <= results["teacher_without"] <= 1  # and without any, once: does the experience help the teacher?
    cells = [json.loads(p.read_text()) for p in (folder / "consolidate").glob("context-*/*/results.json")]
    assert {r["software"]["transformers"] for r in cells + [results]} == {transformers.__version__}
    table = (folder / "consolidate" / "results-random.md").read_text()
    assert "| Base | In-Context | Teacher, no context | Teacher in-context | Off-policy CD | OPCD |" in table
    assert (folder / "consolidate" / "results-random.png").stat().st_size > 0
    runs = {json.loads(p.read_text())["context"] for p in (folder / "consolidate").glob("context-*/*/results.json")}
    assert runs == {"- EXPERIENCE ITEM: Add the ones first.", render(["Add the ones first.", "H is a hole."])}
    assert not list((folder / "consolidate").glob("context-*/*/checkpoints"))

    [best] = select(load_pool(folder, 512), "best")
    again = consolidate(cfg, Plan(selection="best", seeds=(0,), test_n=2, ood=False, checkpoint="last"), progress=False)
    ran = [json.loads(p.read_text()) for p in (folder / "consolidate").glob("context-*/*/results.json")]
    assert len(ran) == 4  # the best context was one of the two: its runs are read back, not redone
    where = [(c["seed"], c["step"]) for c in results["contexts"]].index((best.seed, best.step))
    assert again["students"]["opcd"] == [results["students"]["opcd"][where]]
    changed = _consolidation_config(
        task, tiny_model, math_files, folder, **{"model.teacher": str(tiny_teacher), "train.lr": 1e-3}
    )
    with pytest.raises(OpcdError, match=r"holds a run with other settings \(train.lr\)"):
        consolidate(changed, Plan(selection="best", seeds=(0,), test_n=2, ood=False, checkpoint="last"), progress=False)
    beside = consolidate(
        changed, Plan(seeds=(0,), test_n=2, ood=False, checkpoint="last", out=str(tmp_path / "lr")), progress=False
    )
    assert beside["base"] == again["base"] and (tmp_path / "lr" / "results-best.md").is_file()
    [run] = (tmp_path / "lr").glob("context-*/opcd-seed0/config.toml")
    assert load_config(run, []).train.lr == 1e-3  # the first runs stay as they were


def test_a_refusal_inside_a_consolidation_run_comes_back_as_one_line(tiny_model, math_files, tmp_path):
    from opcd.recipes.consolidate import Plan, consolidate

    folder = tmp_path / "exp"
    _write_seed(folder, 0, [["Add the ones first."]], validation=0.5)
    cfg = _consolidation_config("math", tiny_model, math_files, folder, **{"loss.min_kl": 1e9})
    with pytest.raises(OpcdError, match="^step 1: the student without the context is already within"):
        consolidate(cfg, Plan(methods=("opcd",), seeds=(0,), test_n=2, ood=False, checkpoint="last"), progress=False)


@pytest.mark.parametrize("task", ["math", "frozenlake"])
def test_consolidation_can_report_the_checkpoint_best_on_validation(task, tiny_model, math_files, tmp_path):
    from opcd.recipes.consolidate import Plan, consolidate

    folder = tmp_path / "exp"
    _write_seed(folder, 0, [["Add the ones first."]], validation=0.5)
    cfg = _consolidation_config(task, tiny_model, math_files, folder, **{"train.steps": 3})
    plan = Plan(methods=("opcd",), seeds=(0,), test_n=2, ood=False, checkpoint="validation")
    results = consolidate(cfg, plan, progress=False)
    assert results["checkpoint"]["rule"].startswith("best on validation")
    assert "checkpoint: best on validation" in (folder / "consolidate" / "results-best-by-validation.md").read_text()
    [run] = (folder / "consolidate").glob("context-*/opcd-seed0-by-validation")
    cell = json.loads((run / "results.json").read_text())["checkpoint"]
    rates = {int(s): r for s, r in cell["validation_rates"].items()}
    assert sorted(rates) == [2, 3]  # every 2 steps (the paper's setting, save_every was 0) and the last
    assert cell["step"] == max(rates, key=lambda s: (rates[s], s)) == results["checkpoint"]["steps"]["0/opcd/seed0"]
    assert not (run / "checkpoints").exists()


@pytest.mark.parametrize("rule", ["last", "validation"])
def test_the_table_shows_every_finished_run_made_with_the_same_settings(rule, tiny_model, math_files, tmp_path):
    from opcd.recipes.consolidate import Plan, consolidate

    folder = tmp_path / "exp"
    _write_seed(folder, 0, [["Add the ones first."]], validation=0.5)
    cfg = _consolidation_config("math", tiny_model, math_files, folder)

    def plan(method: str, seed: int, test_n: int = 2) -> Plan:
        return Plan(methods=(method,), seeds=(seed,), test_n=test_n, ood=False, checkpoint=rule)

    opcd = consolidate(cfg, plan("opcd", 0), progress=False)
    [done] = (folder / "consolidate").glob("context-*/opcd-seed0*/results.json")
    written = done.stat().st_mtime_ns
    both = consolidate(cfg, plan("offpolicy", 1), progress=False)
    assert done.stat().st_mtime_ns == written  # read back from the folder, not rerun
    assert both["students"]["opcd"] == opcd["students"]["opcd"]
    assert set(both["runs"]) == {"0/opcd/seed0", "0/offpolicy/seed1"} and both["seeds"] == [0, 1]
    assert [c["text"] for c in both["contexts"]] == ["- EXPERIENCE ITEM: Add the ones first."]
    suffix = "-by-validation" if rule == "validation" else ""
    table = (folder / "consolidate" / f"results-best{suffix}.md").read_text()
    assert "training seeds Off-policy CD [1], OPCD [0]" in table
    assert "| Base | In-Context | Off-policy CD | OPCD |" in table
    # not this table's: a run made with other settings, or on another test set, even in the same folder
    changed = _consolidation_config("math", tiny_model, math_files, folder, **{"train.lr": 1e-3})
    alone = consolidate(changed, plan("offpolicy", 2), progress=False)
    assert set(alone["runs"]) == {"0/offpolicy/seed2"} and set(alone["students"]) == {"offpolicy"}
    other_test = consolidate(cfg, plan("opcd", 3, test_n=1), progress=False)
    assert set(other_test["runs"]) == {"0/opcd/seed3"}


def test_checkpoint_selection_takes_the_best_on_validation_and_the_later_of_a_tie(tmp_path, monkeypatch):
    import opcd.recipes.games as games
    from opcd.games.episodes import VALIDATION_SEEDS, Episode
    from opcd.recipes.games import GameYardstick
    from opcd.recipes.pipeline import choose_checkpoint

    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"step-{step:06d}" / "model").mkdir(parents=True)
    cfg = load_config(None, ["experience.task=frozenlake", "data.context=- EXPERIENCE ITEM: avoid H."])
    scores, calls = {"step-000002": 0.4, "step-000004": 0.4, "step-000006": 0.2}, []

    def success_rate(model, tokenizer, renderer, game, n, max_new_tokens, dtype, context=None, first=0, desc=None):
        calls.append((context, first, n))
        return scores[Path(model).parent.name], [Episode(seed=0)]

    monkeypatch.setattr(games.models, "load_model", lambda path, dtype, device: path)
    monkeypatch.setattr(games, "success_rate", success_rate)
    yard = GameYardstick(cfg, test_n=8, validation_n=5)
    step, path, selection = choose_checkpoint(tmp_path, yard)
    assert step == 4 and path.name == "step-000004" and selection["validation_rates"] == {2: 0.4, 4: 0.4, 6: 0.2}
    assert set(calls) == {(None, VALIDATION_SEEDS, 5)}  # without context, on validation environments
    assert selection["rule"] == f"best on validation (5 environments {VALIDATION_SEEDS}..{VALIDATION_SEEDS + 4})"
    choose_checkpoint(tmp_path, yard)
    assert len(calls) == 3  # scores are kept: a rerun does not play again
    (tmp_path / "checkpoints" / "step-000002" / "model").rmdir()  # rewritten (a rerun from scratch): scored again
    (tmp_path / "checkpoints" / "step-000002" / "model").mkdir()
    os.utime(tmp_path / "checkpoints" / "step-000002" / "model", (1, 1))
    choose_checkpoint(tmp_path, yard)
    assert len(calls) == 4
    assert choose_checkpoint(tmp_path, GameYardstick(cfg, test_n=8, validation_n=0))[0] == 6  # no split: the last


def test_game_success_is_measured_on_the_environments_asked_for(monkeypatch):
    import opcd.core.rollout as rollout
    import opcd.games.episodes as episodes

    played = []

    def play(sampler, tokenizer, renderer, game, seeds, seed, context=None, desc=None):
        played.append(seeds)
        return [episodes.Episode(seed=s, turns=[], success=s % 2 == 0) for s in seeds]

    monkeypatch.setattr(episodes, "play", play)
    monkeypatch.setattr(rollout, "eos_ids", lambda tokenizer, model: {0})
    tokenizer = SimpleNamespace(pad_token_id=0)
    rate, _ = episodes.success_rate(None, tokenizer, None, "frozenlake", 3, 8, "fp32", first=episodes.VALIDATION_SEEDS)
    assert played == [[50_000, 50_001, 50_002]] and rate == 2 / 3
    episodes.success_rate(None, tokenizer, None, "frozenlake", 2, 8, "fp32")
    assert played[-1] == [0, 1]  # the test environments


def test_checkpoint_selection_needs_a_validation_split(tiny_model, math_files, tmp_path):
    from opcd.recipes.consolidate import Plan, consolidate

    folder = tmp_path / "exp"
    _write_seed(folder, 0, [["Add the ones first."]], validation=0.5)
    for missing in ({"experience.validation_max": 0}, {"experience.validation": ""}):
        cfg = _consolidation_config("math", tiny_model, math_files, folder, **missing)
        with pytest.raises(OpcdError, match=r"^--checkpoint validation \(the default\) scores every checkpoint"):
            consolidate(cfg, Plan(checkpoint="validation", seeds=(0,), test_n=2, ood=False), progress=False)
    # the whole pipeline refuses it before extracting anything
    config = tmp_path / "run.toml"
    config.write_text(f'[experience]\ndir = "{tmp_path / "never"}"\nvalidation_max = 0\n')
    assert main(["experience", "run", str(config)]) == 2  # validation is the default rule
    assert not (tmp_path / "never").exists()


def test_the_test_set_is_checked_before_extraction_and_a_run_on_another_is_not_reused(tiny_model, math_files, tmp_path):
    from opcd.recipes.consolidate import Plan, check_plan, run_cell

    folder = tmp_path / "exp"
    plan = Plan(checkpoint="last", seeds=(0,), test_n=2, ood=False)
    test = tmp_path / "test.jsonl"
    cfg = _consolidation_config("math", tiny_model, math_files, folder, **{"experience.test": str(test)})
    test.write_text(json.dumps({"prompt": "What is 20 plus 21?", "answer": "forty-one"}) + "\n")
    with pytest.raises(OpcdError, match=r"test.jsonl:1: experience.test problems need an 'answer' holding a number"):
        check_plan(cfg, plan)
    test.write_text(math_files.read_text())  # the problems extraction learns from
    with pytest.raises(OpcdError, match=r"2 test prompt\(s\) of .*test.jsonl' also appear in the training prompts"):
        check_plan(cfg, plan)
    test.write_text(
        "".join(json.dumps({"prompt": f"What is {a} times 3?", "answer": str(3 * a)}) + "\n" for a in (1, 2, 3))
    )
    assert check_plan(cfg, plan) == {"prompts": str(test), "n": 2}
    assert check_plan(cfg, Plan(checkpoint="last", test_n=40)) == {"prompts": str(test), "n": 3}

    run = tmp_path / "runs" / "opcd-seed0"  # a finished run, measured on GSM8K before experience.test was set
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"test": {"prompts": "opcd:gsm8k_test", "n": 2}}))
    cell = _consolidation_config("math", tiny_model, math_files, folder, **{"train.run_dir": str(run)})
    with pytest.raises(OpcdError, match=rf"{run} was tested on opcd:gsm8k_test \(2\), not .*test.jsonl \(2\)"):
        run_cell(cell, plan, tmp_path / "runs", False, check_plan(cfg, plan))
    assert run_cell(cell, plan, tmp_path / "runs", False, {"prompts": "opcd:gsm8k_test", "n": 2})["test"]["n"] == 2


def test_a_consolidation_run_killed_for_memory_is_named_as_such(tmp_path):
    import multiprocessing
    import os
    import signal
    import time

    from opcd.recipes.consolidate import cell_failure

    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))
    process.start()
    os.kill(process.pid, signal.SIGKILL)  # what the out-of-memory killer sends
    process.join()
    message = cell_failure(tmp_path / "opcd-seed1", process.exitcode)
    assert "out-of-memory killer" in message and "train.micro_batch_size" in message and "\n" not in message
    assert "(exit code 1)" in cell_failure(tmp_path / "opcd-seed1", 1)


def test_per_prompt_contexts_come_with_a_training_config(tiny_model, math_files, tmp_path):
    from opcd.recipes.consolidate import write_per_prompt

    folder = tmp_path / "exp"
    _write_seed(folder, 0, [["One."], ["One.", "Two."]])
    cfg = _extract_config(tiny_model, math_files, folder)
    out = write_per_prompt(cfg, load_pool(folder, 512), seed=0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["context"] for r in rows} <= {c.context for c in load_pool(folder, 512)}
    train_cfg = load_config(out.with_suffix(".toml"))
    assert train_cfg.data.prompts == str(out) and train_cfg.data.placement == "user"
    assert "# Experience" in train_cfg.data.user_template and train_cfg.loss.mode == "opcd"


def test_the_results_plot_shows_scores_on_a_percent_axis_with_instruction_following_beside(tmp_path, kept_figures):
    from opcd.recipes import consolidate_table

    result = {
        "task": "frozenlake",
        "student": "tiny",
        "base": 0.0,
        "in_context": [0.0],
        "teacher_in_context": [],
        "students": {"offpolicy": [0.0, 0.0], "opcd": [0.0, 0.0]},
        "ood": {"base": 0.467, "offpolicy": [0.358, 0.358], "opcd": [0.442, 0.375]},
    }
    consolidate_table.plot(result, tmp_path / "with-ood.png")
    scores, ood = kept_figures[-1].axes
    assert scores.get_ylim() == (0, 100) and ood.get_ylim() == (0, 100)  # all zeros stay a flat line at 0 %
    assert [t.get_text() for t in scores.get_xticklabels()] == ["Base", "In-Context", "Off-policy CD", "OPCD"]
    assert [t.get_text() for t in ood.get_xticklabels()] == ["Base", "Off-policy CD", "OPCD"]
    assert [t.get_text() for t in ood.texts] == ["46.7", "35.8", "40.8"]
    opcd_colour = scores.patches[3].get_facecolor()
    assert ood.patches[2].get_facecolor() == opcd_colour  # a method keeps its colour in both panels
    consolidate_table.plot({**result, "ood": {}}, tmp_path / "without.png")
    assert len(kept_figures[-1].axes) == 1 and (tmp_path / "without.png").stat().st_size > 0
    cross = {**result, "teacher_without": 0.25, "teacher_in_context": [0.3]}  # cross-size: the teacher's two bars
    consolidate_table.plot(cross, tmp_path / "cross.png")
    scores, ood = kept_figures[-1].axes
    names = [t.get_text() for t in scores.get_xticklabels()]
    assert names == ["Base", "In-Context", "Teacher,\nno context", "Teacher\nin-context", "Off-policy CD", "OPCD"]
    assert scores.patches[5].get_facecolor() == opcd_colour == ood.patches[2].get_facecolor()


def test_extraction_samples_at_the_papers_settings_for_the_task():
    """Section 7's rollout settings unless set: math T 0.6; games T 0.7 with top-p 0.8; no top-k cut."""
    math = sampled(load_config(None, []), 320)
    assert (math.temperature, math.top_p, math.top_k, math.max_new_tokens) == (0.6, 1.0, 0, 320)
    game = sampled(load_config(None, ["experience.task=sokoban"]), 64)
    assert (game.temperature, game.top_p, game.top_k) == (0.7, 0.8, 0)
    own = ["experience.temperature=1.0", "experience.top_p=0.95", "experience.top_k=20"]
    assert _sampling_of(sampled(load_config(None, own), 8)) == (1.0, 0.95, 20)
    with pytest.raises(OpcdError, match="experience.top_p"):
        validate(load_config(None, ["experience.top_p=1.5"]))
    assert main(["experience", "extract", "experience.top_p=1.5"]) == 2  # refused before any model loads


def _sampling_of(rollout):
    return rollout.temperature, rollout.top_p, rollout.top_k


def test_feedback_grades_each_attempt_and_shows_the_result_to_the_lesson(tiny_model, math_files, tmp_path, monkeypatch):
    """`experience.feedback=true`: the trace ends with whether the attempt was right (and the right answer if not),
    the lesson request asks what made it wrong, and the record keeps the grade; off, math stays label-free."""
    import opcd.experience.extraction as extraction
    import opcd.experience.tasks as tasks
    from opcd.experience.lessons import LESSON_PROMPTS

    answers = {json.loads(x)["prompt"]: json.loads(x)["answer"] for x in math_files.read_text().splitlines()}
    solved = {q for q, a in answers.items() if int(a) % 4 == 3}  # the tiny model answers these right, the rest wrong

    def solving(model, tokenizer, prompts, *args, **kwargs):  # an attempt (tasks.respond): the model's own answer
        texts, finished = real_attempt(model, tokenizer, prompts, *args, **kwargs)
        shown = tokenizer.decode(prompts[0])
        right = [answers[q] for q in solved if q in shown]
        return ([f"The sum is <answer>{right[0]}</answer>"] if right else [t + " 0" for t in texts]), finished

    asked, real_attempt, real_respond = [], tasks.respond, extraction.respond

    def recording(model, tokenizer, prompts, *args, **kwargs):  # a lesson request (extraction.respond)
        asked.append(tokenizer.decode(prompts[0]))
        return real_respond(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(tasks, "respond", solving)
    monkeypatch.setattr(extraction, "respond", recording)
    monkeypatch.setattr(extraction, "lesson_items", lambda answer, finished, limit: [f"lesson on {answer!r}"])
    graded = tmp_path / "graded"
    extract(_extract_config(tiny_model, math_files, graded, **{"experience.feedback": "true"}), progress=False)
    records = read_records(seed_file(graded, 0)) + read_records(seed_file(graded, 1))
    for r in records:
        problem = r.trace.split("\nOutput: ")[0].removeprefix("Input: ")
        assert r.success == (problem in solved)
        assert r.trace.endswith(
            "Result: correct." if r.success else f"Result: wrong. The correct answer is {answers[problem]}."
        )
    assert {r.success for r in records} == {True, False}
    graded_asks = [a for a in asked if "your answer was checked" in a]
    assert len(graded_asks) == 6 and all("Result: " in a for a in graded_asks)  # 3 problems x 2 seeds
    assert LESSON_PROMPTS["graded"] != LESSON_PROMPTS["math"]
    with pytest.raises(OpcdError, match=r"extracted with other settings \(feedback, lesson_prompt\)"):
        extract(_extract_config(tiny_model, math_files, graded), progress=False)

    plain = tmp_path / "plain"  # a folder extracted before `feedback` existed resumes without it, and refuses it
    extract(_extract_config(tiny_model, math_files, plain, **{"experience.problems_per_seed": 1}), progress=False)
    assert all(r.success is None and "Result:" not in r.trace for r in read_records(seed_file(plain, 0)))
    settings = json.loads((plain / "settings.json").read_text())
    del settings["feedback"]
    (plain / "settings.json").write_text(json.dumps(settings))
    extract(_extract_config(tiny_model, math_files, plain, **{"experience.problems_per_seed": 2}), progress=False)
    with pytest.raises(OpcdError, match=r"\(feedback, lesson_prompt\)"):
        extract(_extract_config(tiny_model, math_files, plain, **{"experience.feedback": "true"}), progress=False)

    unanswered = tmp_path / "unanswered.jsonl"
    unanswered.write_text("".join(json.dumps({"prompt": f"Add {a} and {a}."}) + "\n" for a in range(6)))
    cfg = _extract_config(tiny_model, unanswered, tmp_path / "u", **{"experience.feedback": "true"})
    with pytest.raises(OpcdError, match=r"unanswered.jsonl.*experience.feedback=true grades every attempt"):
        extract(cfg, progress=False)
