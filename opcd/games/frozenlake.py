"""FrozenLake: walk from the top-left corner to the goal in the bottom-right corner without stepping into a hole.

As in TextArena: an exact number of holes, never on the start or goal, and a hole-free path between them (found by
BFS); the board is a bordered ASCII table with cells ' ', 'H', 'G', 'P' and 'P/G'. Here the path must also fit in
`max_turns` moves, so every generated game can be won.
"""

from __future__ import annotations

import random

from opcd.errors import OpcdError
from opcd.games.base import ACTIONS, STEP_RC, BoardGame, Move, shortest_actions

Cell = tuple[int, int]
_MAX_TRIES = 1000


class FrozenLake(BoardGame):
    name = "frozenlake"

    def __init__(self, max_turns: int = 5, size: int = 3, holes: int = 2):
        if not 0 <= holes <= size * size - 3:
            raise OpcdError(f"frozenlake: {holes} holes do not fit a {size}x{size} grid with a path to the goal")
        self.max_turns, self.size, self.num_holes = max_turns, size, holes
        self.start: Cell = (0, 0)
        self.goal: Cell = (size - 1, size - 1)

    def _new_board(self, rng: random.Random) -> None:
        free = [(r, c) for r in range(self.size) for c in range(self.size) if (r, c) not in (self.start, self.goal)]
        for _ in range(_MAX_TRIES):
            self.holes = frozenset(rng.sample(free, self.num_holes))
            self.player = self.start
            path = self.solve_or_none()
            if path is not None and len(path) <= self.max_turns:
                return
        raise OpcdError(f"frozenlake: no {self.size}x{self.size} grid with {self.num_holes} holes winnable in time")

    def _move(self, action: str) -> Move:
        dr, dc = STEP_RC[action]
        r, c = self.player[0] + dr, self.player[1] + dc
        if not (0 <= r < self.size and 0 <= c < self.size):
            return Move(invalid=f"You tried to move {action} but hit a wall!")
        self.player = (r, c)
        feedback = f"You moved {action} to position ({r}, {c})."
        if self.player in self.holes:
            return Move(feedback, end="You fell into a hole.")
        if self.player == self.goal:
            return Move(feedback, end="You reached the goal.", won=True)
        return Move(feedback)

    def render(self) -> str:
        def cell(rc: Cell) -> str:
            if rc == self.player:
                return "P/G" if rc == self.goal else "P"
            return "H" if rc in self.holes else "G" if rc == self.goal else " "

        rule = "+" + "+".join(["-----"] * self.size) + "+"
        lines = [rule]
        for r in range(self.size):
            lines.append("|" + "|".join(f" {cell((r, c)):^3} " for c in range(self.size)) + "|")
            lines.append(rule)
        return "\n".join(lines)

    def solve_or_none(self) -> list[str] | None:
        """A shortest hole-free walk from the player to the goal, or None if there is none."""

        def successors(here: Cell):
            if here in self.holes:  # fallen in: the walk is over
                return
            for action in ACTIONS:
                r, c = here[0] + STEP_RC[action][0], here[1] + STEP_RC[action][1]
                if 0 <= r < self.size and 0 <= c < self.size and (r, c) not in self.holes:
                    yield action, (r, c)

        return shortest_actions(self.player, successors, lambda here: here == self.goal)

    def solve(self) -> list[str]:
        """A shortest winning action list from the current state."""
        path = self.solve_or_none()
        if path is None:
            raise OpcdError("frozenlake: the goal cannot be reached from here")
        return path
