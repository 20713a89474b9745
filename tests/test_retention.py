"""The retention yardstick: base, in-context teacher and student on the out-of-distribution suites, and like with like
(each model's score among its answers that show the behaviour and among those that do not)."""

from __future__ import annotations

from opcd.recipes.pipeline import ood_results
from opcd.recipes.report import ood_table
from opcd.recipes.stats import like_interval, paired_interval, split_by_behaviour
from opcd.tasks.conflicts import conflicting_ids, conflicts
from opcd.tasks.ood import OodItem, instruction_items


def _summary(passed, responses):
    return {"rate": sum(passed) / len(passed), "n": len(passed), "passed": passed, "responses": responses}


def test_answers_are_split_by_whether_they_show_the_behaviour():
    groups = split_by_behaviour([True, False, True, True, False], [True, True, False, False, False])
    assert groups == {"shows": [1, 2], "not": [2, 3]}


def test_three_rates_and_like_with_like_per_suite():
    french = lambda response: response.startswith("Le")  # noqa: E731
    base = {
        "ood": {"gsm8k": _summary([True, True, False, False], ["a", "b", "c", "d"])},
        "ood_in_context": {"gsm8k": _summary([True, False, False, True], ["Le a", "Le b", "c", "d"])},
    }
    student = {"gsm8k": _summary([False, False, True, True], ["Le a", "Le b", "Le c", "d"])}
    row = ood_results(base, student, french)["gsm8k"]
    assert (row["base"], row["in_context"], row["student"], row["n"]) == (0.5, 0.5, 0.5, 4)
    assert row["like_with_like"] == {
        "in_context": {"shows": [1, 2], "not": [1, 2]},
        "student": {"shows": [1, 3], "not": [1, 1]},
    }
    assert row["like_minus_teacher"][0] == 1 / 3 - 1 / 2
    table = "\n".join(ood_table({"gsm8k": row}))
    assert "| gsm8k (4) | 50.0% | 50.0% | 50.0% | +0.0 points (-100.0 to +100.0) |" in table
    assert "| gsm8k | 50.0% (1/2) | 33.3% (1/3) | 50.0% (1/2) | 100.0% (1/1) | -16.7 (" in table


def test_like_with_like_has_an_interval_over_the_prompts_both_models_answered():
    shows = [True] * 60 + [False] * 40
    teacher = [True] * 30 + [False] * 30 + [True] * 20 + [False] * 20  # 50 % among its answers that show it
    worse = [True] * 15 + [False] * 45 + [True] * 20 + [False] * 20  # 25 %: a real loss on the same kind
    difference, low, high = like_interval(teacher, shows, worse, shows)
    assert difference == -0.25 and low < -0.25 < high < 0
    other = [i % 2 == 0 for i in range(60)] + [False] * 40  # the same 50 % on other prompts: within noise
    difference, low, high = like_interval(teacher, shows, other, shows)
    assert difference == 0 and low < 0 < high
    assert like_interval(teacher, shows, worse, [False] * 100) is None  # the student never shows the behaviour


def test_without_a_checker_or_a_shared_context_only_what_was_measured_is_shown():
    base = {"ood": {"gsm8k": _summary([True, False], ["a", "b"])}}
    student = {"gsm8k": _summary([True, True], ["a", "b"])}
    row = ood_results(base, student, None)["gsm8k"]
    assert row == {"base": 0.5, "student": 1.0, "n": 2, "minus_base": {"student": [0.5, 0.0, 1.0]}}
    table = "\n".join(ood_table({"gsm8k": row}))
    assert "in-context" not in table and "Like with like" not in table
    base["ood_in_context"] = {"gsm8k": _summary([False, False], ["a", "b"])}
    assert "like_with_like" not in ood_results(base, student, None)["gsm8k"]  # no checker: no split


def test_the_difference_from_the_base_has_a_paired_interval_that_tells_a_loss_from_noise():
    base = [True] * 30 + [False] * 70
    lost = [False] * 15 + [True] * 15 + [False] * 70  # 15 of the base's 30 lost, none won
    difference, low, high = paired_interval(base, lost)
    assert difference == -0.15 and low < -0.15 < high < 0  # a real loss: the interval stays below 0
    swapped = [False] * 10 + [True] * 20 + [True] * 10 + [False] * 60  # 10 lost, 10 won: same rate
    difference, low, high = paired_interval(base, swapped)
    assert difference == 0 and low < 0 < high and high - low < 0.2  # within noise; unpaired rates: about 0.25
    assert paired_interval(base, swapped) == [difference, low, high]  # a fixed seed: the report does not wobble
    old = {"base": 0.3, "student": 0.15, "n": 100}  # results written before the interval was measured
    assert "| x (100) | 30.0% | 15.0% | -15.0 points |" in "\n".join(ood_table({"x": old}))


def test_the_conflict_rule_pairs_behaviours_with_the_instructions_they_break_by_design():
    item = lambda *ids: OodItem("q", instruction_id_list=ids)  # noqa: E731
    assert conflicts(["language:fr"], item("keywords:existence"))
    assert not conflicts(["language:fr"], item("punctuation:no_comma"))
    assert not conflicts(["language:en"], item("keywords:existence"))
    assert conflicts(["starts_with:Arr!"], item("punctuation:no_comma", "startend:quotation"))
    assert not conflicts(["starts_with:Arr!"], item("length_constraints:number_words"))
    assert conflicts(["max_words:20"], item("length_constraints:number_words"))
    assert conflicts(["language:fr", "max_words:50"], item("length_constraints:number_paragraphs"))  # any spec
    assert conflicts(["ifeval:detectable_format:title"], item("detectable_format:json_format"))  # same family
    assert not conflicts(["ifeval:detectable_format:title"], item("keywords:existence"))
    assert conflicting_ids("python:mine") is None  # no rule: no split


def test_the_instruction_suite_is_split_into_conflicting_prompts_and_the_others():
    items = instruction_items(6)
    flags = [conflicts(["language:fr"], i) for i in items]
    assert any(flags) and not all(flags)  # the first six prompts hold both kinds
    passed = {"base": [True] * 6, "student": [i % 2 == 0 for i in range(6)]}
    base = {"ood": {"instructions": _summary(passed["base"], ["x"] * 6)}}
    student = {"instructions": _summary(passed["student"], ["x"] * 6)}
    rule = lambda item: conflicts(["language:fr"], item)  # noqa: E731
    split = ood_results(base, student, None, rule)["instructions"]["conflict_split"]
    n = sum(flags)
    assert split["conflicting"]["base"] == [n, n] and split["other"]["base"] == [6 - n, 6 - n]
    assert split["conflicting"]["student"][0] == sum(p for p, f in zip(passed["student"], flags, strict=True) if f)
    assert "in_context" not in split["other"]
    other = ood_results(base, student, None, rule)["instructions"]["other_minus_base"]
    assert list(other) == ["student"]
    lost = sum(not p for p, f in zip(passed["student"], flags, strict=True) if not f)
    assert other["student"][0] == -lost / (6 - n) and other["student"][1] <= other["student"][0] <= other["student"][2]
    row = {"base": 1.0, "student": 0.5, "n": 6, "conflict_split": split, "other_minus_base": other}
    table = "\n".join(ood_table({"instructions": row}))
    assert f"| conflicting ({n} prompts) |" in table and f"| other ({6 - n} prompts) |" in table
    assert f"Student − base on the other prompts: {-100 * lost / (6 - n):+.1f} points (" in table
