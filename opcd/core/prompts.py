"""Student prompt vs teacher prompt: the context `c` must be the *only* difference between the two.

The student sees exactly what a user of the distilled model sends: the plain chat template over the user's own
messages. The teacher sees the same rendering with `c` added, either to the system message or inside the user turn
through a template. Chat templates inject a default system text when there is no system message (Qwen: "You are
Qwen, created by Alibaba Cloud...", SmolLM2: "You are a helpful AI assistant named SmolLM..."); replacing it on the
teacher side only would make the teacher differ by more than `c`, so by default we keep it and append `c` to it.

Rendered templates already hold their special tokens: they are tokenized with `add_special_tokens=False`, so no
second BOS sneaks in. The teacher's input is always teacher-prompt ids ++ the student's response ids, never
re-tokenized text.
"""

from __future__ import annotations

from dataclasses import dataclass

from opcd.config import DataConfig
from opcd.errors import OpcdError

_SENTINEL = "\u2063OPCD-SYSTEM-SENTINEL\u2063"
_PROBE = [{"role": "user", "content": "probe"}]


def default_system_text(tokenizer) -> str | None:
    """The system text the chat template adds when the conversation has none (None if it adds none)."""
    plain = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    marked = tokenizer.apply_chat_template(
        [{"role": "system", "content": _SENTINEL}, *_PROBE], tokenize=False, add_generation_prompt=True
    )
    head, _, tail = marked.partition(_SENTINEL)
    if plain.startswith(head) and plain.endswith(tail) and len(plain) >= len(head) + len(tail):
        return plain[len(head) : len(plain) - len(tail)]
    return None


@dataclass(frozen=True)
class PromptPair:
    student_ids: list[int]
    teacher_ids: list[int]
    teacher_prefix: int  # leading teacher tokens that depend on the context alone (cacheable across prompts)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PromptRenderer:
    """Renders (messages, context) into the student's and the teacher's prompt token ids."""

    def __init__(self, tokenizer, data: DataConfig):
        self.tokenizer = tokenizer
        self.data = data
        self.default_system = default_system_text(tokenizer) if data.keep_default_system else None
        self._prefixes: dict[str, list[int]] = {}

    def _ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def student_ids(self, messages: list[dict]) -> list[int]:
        """The plain chat template over the user's own messages: how a distilled model is called."""
        return self._ids(messages)

    def teacher_messages(self, messages: list[dict], context: str) -> list[dict]:
        messages = [dict(m) for m in messages]
        if self.data.placement == "user":
            last = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last]["content"] = self.data.user_template.format(
                context=context, prompt=messages[last]["content"]
            )
            return messages
        sep = self.data.system_separator
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = messages[0]["content"] + sep + context
        elif self.default_system:
            messages.insert(0, {"role": "system", "content": self.default_system + sep + context})
        else:
            messages.insert(0, {"role": "system", "content": context})
        return messages

    def context_prefix(self, context: str) -> list[int]:
        """The teacher tokens every prompt with this context starts with: what two unrelated probes share."""
        if context not in self._prefixes:
            a = self._ids(self.teacher_messages([{"role": "user", "content": "A"}], context))
            b = self._ids(self.teacher_messages([{"role": "user", "content": "Zq?"}], context))
            self._prefixes[context] = a[: _common_prefix(a, b)]
        return self._prefixes[context]

    def render(self, messages: list[dict], context: str) -> PromptPair:
        teacher = self._ids(self.teacher_messages(messages, context))
        return PromptPair(self._ids(messages), teacher, _common_prefix(teacher, self.context_prefix(context)))


def check_lengths(
    pairs: list[PromptPair], sources: list[str], limit: int, max_new_tokens: int, whose: str = "the model's"
) -> None:
    """Fail before training if any teacher prompt plus a full response would not fit the model (`whose` window)."""
    for pair, source in zip(pairs, sources, strict=True):
        need = len(pair.teacher_ids) + max_new_tokens
        if need > limit:
            raise OpcdError(
                f"{source}: prompt + context is {len(pair.teacher_ids)} tokens; with rollout.max_new_tokens="
                f"{max_new_tokens} that exceeds {whose} limit of {limit} tokens: shorten the context or the prompt"
            )
