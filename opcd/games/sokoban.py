"""Sokoban with one box: push it onto the target. The player can push the box but not pull it.

Rendered as TextArena does, one space-separated row per line: '#' wall, '_' floor, 'O' empty target, 'X' box,
'√' box on target, 'P' player. A player standing on the target shows as 'P' (TextArena's choice: the 'O' comes back when
the player leaves); generated games never start that way, so the first board always shows the target.

Generation differs from TextArena's reverse-play search: a walled square room with a few random inner walls and random
player, box and target cells, kept only when a BFS over (player, box) states wins within `max_turns` moves. Candidates
are drawn from one seeded RNG until one qualifies, so a seed always gives the same puzzle.
"""

from __future__ import annotations

import random

from opcd.errors import OpcdError
from opcd.games.base import ACTIONS, STEP_RC, BoardGame, Move, shortest_actions

Cell = tuple[int, int]
State = tuple[Cell, Cell]  # (player, box)
_MAX_TRIES = 10_000


def _add(cell: Cell, action: str) -> Cell:
    return cell[0] + STEP_RC[action][0], cell[1] + STEP_RC[action][1]


class Sokoban(BoardGame):
    name = "sokoban"

    def __init__(self, max_turns: int = 5, size: int = 6):
        if size < 4:
            raise OpcdError(f"sokoban: size must be at least 4 (a 2x2 room inside the walls), got {size}")
        self.max_turns, self.size = max_turns, size

    def _new_board(self, rng: random.Random) -> None:
        inside = [(r, c) for r in range(1, self.size - 1) for c in range(1, self.size - 1)]
        border = {(r, c) for r in range(self.size) for c in range(self.size)} - set(inside)
        for _ in range(_MAX_TRIES):
            inner_walls = rng.sample(inside, rng.randint(1, max(1, len(inside) // 5)))
            self.walls = frozenset(border | set(inner_walls))
            floor = [cell for cell in inside if cell not in self.walls]
            self.player, self.box, self.target = rng.sample(floor, 3)
            path = self.solve_or_none()
            if path is not None and len(path) <= self.max_turns:
                return
        raise OpcdError(f"sokoban: no {self.size}x{self.size} puzzle winnable in {self.max_turns} moves was found")

    def _move(self, action: str) -> Move:
        ahead = _add(self.player, action)
        if ahead in self.walls:
            return Move(invalid="You cannot move into a wall!")
        if ahead != self.box:
            self.player = ahead
            return Move(f"You moved {action}.")
        if _add(ahead, action) in self.walls:
            return Move(invalid="You cannot push the box into a wall!")
        self.player, self.box = ahead, _add(ahead, action)
        if self.box == self.target:
            return Move(f"You pushed the box {action}.", end="You solved the puzzle.", won=True)
        return Move(f"You pushed the box {action}.")

    def render(self) -> str:
        def cell(rc: Cell) -> str:
            if rc in self.walls:
                return "#"
            if rc == self.player:
                return "P"
            if rc == self.box:
                return "√" if rc == self.target else "X"
            return "O" if rc == self.target else "_"

        return "\n".join(" ".join(cell((r, c)) for c in range(self.size)) for r in range(self.size))

    def solve_or_none(self) -> list[str] | None:
        """A shortest push sequence that puts the box on the target, or None if the box is stuck."""

        def successors(state: State):
            player, box = state
            for action in ACTIONS:
                ahead = _add(player, action)
                if ahead in self.walls:
                    continue
                if ahead != box:
                    yield action, (ahead, box)
                elif _add(box, action) not in self.walls:
                    yield action, (ahead, _add(box, action))

        return shortest_actions((self.player, self.box), successors, lambda state: state[1] == self.target)

    def solve(self) -> list[str]:
        """A shortest winning action list from the current state."""
        path = self.solve_or_none()
        if path is None:
            raise OpcdError("sokoban: the box can no longer reach the target")
        return path
