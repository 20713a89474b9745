"""The game yardstick: a model's greedy success rate on fixed environments, with the experience in the wrapper or not.

The test environments are seeds 0..N-1 (the paper: 128 fixed seeds); the checkpoint is chosen on the validation
environments (seeds `VALIDATION_SEEDS`..), never on the test ones.
"""

from __future__ import annotations

from opcd.config import Config
from opcd.core import models
from opcd.core.data import shared_context
from opcd.games.episodes import VALIDATION_SEEDS, game_renderer, success_rate
from opcd.recipes.stats import rate_margin


class GameYardstick:
    metric = "success"
    scorer = ["success"]
    last_rule = "last checkpoint"
    select = "best"  # on validation; ties: the later step
    gap_key = None  # a game's turns are not one prompt and answer: no context gap
    behaviour = None  # success is the whole score: no behaviour to look for in other answers
    conflict = None

    def __init__(self, cfg: Config, test_n: int, validation_n: int, progress: bool = True):
        """`validation_n` = 0: no validation split (the last checkpoint is reported)."""
        e = cfg.experience
        self.cfg, self.game, self.test_n, self.validation_n, self.progress = cfg, e.task, test_n, validation_n, progress
        self.renderer = game_renderer(models.load_tokenizer(cfg.model.student), cfg.data.user_template)
        self.context = shared_context(cfg.data)
        self.test = {"prompts": f"{self.game} environments 0..{test_n - 1}", "n": test_n}
        self.key = {
            "model": cfg.model.student,
            "game": self.game,
            "n": test_n,
            "tokens": e.eval_tokens,
            "dtype": cfg.model.dtype,
            "wrapper": cfg.data.user_template,
            "context": self.context,
        }
        last = VALIDATION_SEEDS + validation_n - 1
        self.validation = f"validation ({validation_n} environments {VALIDATION_SEEDS}..{last})" if validation_n else ""
        self.validation_key = {**self.key, "first": VALIDATION_SEEDS, "n": validation_n} if validation_n else {}

    def _rate(self, model_path: str, with_context: bool, first: int, n: int, label: str) -> dict:
        model = models.load_model(model_path, self.cfg.model.dtype, self.cfg.model.device)
        boards = "validation" if first else "test"
        rate, episodes = success_rate(
            model,
            self.renderer.tokenizer,
            self.renderer,
            self.game,
            n,
            self.cfg.experience.eval_tokens,
            self.cfg.model.dtype,
            self.context if with_context else None,
            first,
            desc=f"{label}, {n} {boards} boards" if self.progress else None,
        )
        return {"rate": rate, "n": n, "turns": sum(len(x.turns) for x in episodes) / len(episodes)}

    def measure(self, model_path: str, *, with_context: bool, label: str) -> dict:
        return self._rate(model_path, with_context, 0, self.test_n, label)

    def validate(self, model_path: str, label: str) -> float:
        return self._rate(model_path, False, VALIDATION_SEEDS, self.validation_n, label)["rate"]

    def margin(self, best: float) -> float:
        return rate_margin(best, self.validation_n)

    def answers(self, base: dict, student: dict) -> list[tuple[str, str, str]]:
        return []  # the episodes are not kept; their success is the whole score
