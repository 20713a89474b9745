"""Two small text games for the experiential-knowledge experiments (an LLM plays; lessons from its attempts are
learnt), and the episodes that play them (`opcd.games.episodes`)."""

from opcd.errors import OpcdError
from opcd.games.base import ACTIONS, STEP_RC, BoardGame, Game, Move, Turn, parse_action, shortest_actions
from opcd.games.frozenlake import FrozenLake
from opcd.games.sokoban import Sokoban

GAMES: dict[str, type] = {"frozenlake": FrozenLake, "sokoban": Sokoban}

__all__ = [
    "ACTIONS", "GAMES", "STEP_RC", "BoardGame", "FrozenLake", "Game", "Move", "Sokoban", "Turn", "make_game",
    "parse_action", "shortest_actions",
]  # fmt: skip


def make_game(name: str) -> Game:
    if name not in GAMES:
        raise OpcdError(f"unknown game '{name}' (known games: {', '.join(GAMES)})")
    return GAMES[name]()
