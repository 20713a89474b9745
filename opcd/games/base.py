"""What the two text games share: the action format, turn counting, the invalid-move allowance, a solver.

The games (FrozenLake, Sokoban) mirror the TextArena games the paper used (`textarena==0.7.4`: FrozenLake 3x3 with
2 holes, Sokoban 6x6 with one box), without the dependency. Deliberate simplifications and departures from TextArena:
- the rules are left out of every observation: the player sees only the board and the available actions;
- the reward is 1.0 for a win and 0.0 otherwise (TextArena pays partial credit for progress);
- an invalid move costs a turn, so a game never asks the model more than `max_turns` times; as in TextArena, one invalid
  move is forgiven and a second in a row ends the game (a valid move in between resets the allowance);
- the last bracketed action in a response counts (TextArena takes the first), so a model may think before it answers.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

ACTIONS = ("up", "down", "left", "right")
STEP_RC = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
_ALIASES = {"w": "up", "a": "left", "s": "down", "d": "right"}
_ACTION_RE = re.compile(r"\[\s*(up|down|left|right|w|a|s|d)\s*\]", re.IGNORECASE)
_NO_ACTION = "No action found. Use [up], [down], [left], [right] or [w], [a], [s], [d]."


@dataclass(frozen=True)
class Turn:
    """What the player gets back after one response."""

    observation: str  # what the player sees next: feedback line(s) + the board; when done, the final feedback
    done: bool
    reward: float  # 1.0 if solved (and done), else 0.0
    reason: str  # when done: why it ended, one sentence; "" while running


class Game(Protocol):
    name: str
    max_turns: int

    def reset(self, seed: int) -> str: ...

    def step(self, response: str) -> Turn: ...


def parse_action(response: str) -> str | None:
    """The last bracketed action in `response` ("[Up]", "[ d ]" ok) as up/down/left/right; None if there is none."""
    found = _ACTION_RE.findall(response)
    if not found:
        return None
    raw = found[-1].lower()
    return _ALIASES.get(raw, raw)


S = TypeVar("S", bound=Hashable)


def shortest_actions(
    start: S, successors: Callable[[S], Iterable[tuple[str, S]]], is_won: Callable[[S], bool]
) -> list[str] | None:
    """Breadth-first search: a shortest action list from `start` to a won state, or None if none is reachable.
    `successors(state)` yields (action, next state) for the moves that keep the game going or win it."""
    parents: dict[S, tuple[S, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if is_won(state):
            actions = []
            while (parent := parents[state]) is not None:
                state, action = parent
                actions.append(action)
            return actions[::-1]
        for action, nxt in successors(state):
            if nxt not in parents:
                parents[nxt] = (state, action)
                queue.append(nxt)
    return None


@dataclass(frozen=True)
class Move:
    """What one action did to the board: a legal move's `feedback`, or the reason it is `invalid`; `end` is set when the
    move ends the game (a win when `won`)."""

    feedback: str = ""
    invalid: str = ""
    end: str = ""
    won: bool = False


class BoardGame:
    """Turn counting, the invalid-move allowance and the observation format shared by the games.

    A game supplies `_new_board(rng)`, `_move(action) -> Move` and `render() -> str`."""

    name = ""
    max_turns = 5

    def reset(self, seed: int) -> str:
        self._new_board(random.Random(seed))
        self.turns = 0
        self._invalid_in_a_row = 0
        self.done = False
        return self._observe("")

    def step(self, response: str) -> Turn:
        if not hasattr(self, "done"):
            raise RuntimeError(f"{self.name}: call reset(seed) before step()")
        if self.done:
            raise RuntimeError(f"{self.name}: step() after the game ended; call reset(seed) to play again")
        self.turns += 1
        action = parse_action(response)
        move = self._move(action) if action else Move(invalid=_NO_ACTION)
        if move.invalid:
            self._invalid_in_a_row += 1
            if self._invalid_in_a_row > 1:
                return self._finish("", f"Second invalid move in a row: {move.invalid}")
            feedback = f"You attempted an invalid move. Reason: {move.invalid}"
            if self.turns < self.max_turns:
                feedback += " Please resubmit a valid move."
        else:
            self._invalid_in_a_row = 0
            if move.end:
                return self._finish(move.feedback, move.end, won=move.won)
            feedback = move.feedback
        if self.turns >= self.max_turns:
            return self._finish(feedback, f"Turn limit reached ({self.max_turns} turns).")
        return Turn(self._observe(feedback), done=False, reward=0.0, reason="")

    def _observe(self, feedback: str) -> str:
        lead = f"{feedback}\n\n" if feedback else ""
        return f"{lead}Current Board:\n\n{self.render()}\n\nAvailable Actions: [up], [down], [left], [right]"

    def _finish(self, feedback: str, reason: str, won: bool = False) -> Turn:
        # The final board stays in view: the transcript is what lessons are later distilled from.
        self.done = True
        lines = "\n".join(line for line in (feedback, reason) if line)
        return Turn(f"{lines}\n\nFinal Board:\n\n{self.render()}", done=True, reward=float(won), reason=reason)

    def _new_board(self, rng: random.Random) -> None:
        raise NotImplementedError

    def _move(self, action: str) -> Move:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError
