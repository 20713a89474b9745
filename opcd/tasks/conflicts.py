"""Which instruction-following prompts a behaviour conflicts with, by a rule fixed before any split result was seen.

An IF-Eval instruction conflicts with a behaviour when both constrain the same property of the answer, so an answer
that shows the behaviour fails the instruction by design: French answers fail "include the keyword 'river'", an
answer that opens with "Arr!" fails "wrap your whole answer in double quotes". The retention yardstick reports the
instruction suite's conflicting and other prompts apart (docs/methods.md, "Retention"); only the other part says
whether distillation damaged instruction following.

The rule is per checker (`opcd.tasks.behaviours`): the instruction ids each one conflicts with. `ifeval:<id>`
conflicts with its own family (the id's part before the colon). A behaviour without a checker has no split.
"""

from __future__ import annotations

from opcd.tasks.ood import OodItem

CASE = {"change_case:english_capital", "change_case:english_lowercase"}
# the check reads English words or English letter case
ENGLISH_WORDING = CASE | {
    "keywords:existence",
    "keywords:frequency",
    "keywords:letter_frequency",
    "combination:repeat_prompt",
    "startend:end_checker",
    "length_constraints:nth_paragraph_first_word",
    "detectable_format:constrained_response",
}
# the check fixes how the answer begins (or the whole answer)
OPENING = CASE | {
    "startend:quotation",
    "combination:repeat_prompt",
    "length_constraints:nth_paragraph_first_word",
    "detectable_format:constrained_response",
    "detectable_format:json_format",
}
# the check fixes how the answer ends (or the whole answer)
CLOSING = CASE | {
    "startend:end_checker",
    "startend:quotation",
    "detectable_content:postscript",
    "detectable_format:constrained_response",
    "detectable_format:json_format",
}
# the check needs length or several parts
LENGTH = {
    "length_constraints:number_words",
    "length_constraints:number_paragraphs",
    "length_constraints:nth_paragraph_first_word",
    "combination:two_responses",
    "combination:repeat_prompt",
    "detectable_format:multiple_sections",
}
# the check fixes the answer's layout, which a JSON object replaces
LAYOUT = (
    OPENING
    | CLOSING
    | LENGTH
    | {
        "detectable_format:number_bullet_lists",
        "detectable_format:number_highlighted_sections",
        "detectable_format:title",
        "punctuation:no_comma",
    }
)
CONFLICTS: dict[str, frozenset[str]] = {
    "language": frozenset(ENGLISH_WORDING),  # any language but English (language:en conflicts with nothing)
    "starts_with": frozenset(OPENING),
    "ends_with": frozenset(CLOSING),
    "contains": frozenset(CASE),
    "uppercase": frozenset({"change_case:english_lowercase"}),
    "max_words": frozenset(LENGTH),
    "json": frozenset(LAYOUT),
    "emoji": frozenset(),
}


def conflicting_ids(spec: str) -> frozenset[str] | None:
    """The instruction ids one checker spec conflicts with; None for a spec the rule does not know."""
    name, _, arg = spec.partition(":")
    if name == "language":
        return frozenset() if arg.lower() in ("en", "english") else CONFLICTS["language"]
    if name == "ifeval":
        return frozenset({f"family:{arg.partition(':')[0]}"})
    return CONFLICTS.get(name)


def conflicts(specs: list[str], item: OodItem) -> bool:
    """Whether the behaviour of `specs` (all of them hold) conflicts with any of the item's instructions."""
    ids = set(item.instruction_id_list)
    families = {f"family:{i.partition(':')[0]}" for i in ids}
    return any(bool((conflicting_ids(spec) or frozenset()) & (ids | families)) for spec in specs)
