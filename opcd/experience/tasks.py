"""What extraction solves: math word problems or game episodes. A task makes an attempt without context (the trace
the lessons are drawn from) and scores a context on its validation split (greedy, the context in the wrapper)."""

from __future__ import annotations

from opcd.config import Config, DataConfig, RolloutConfig
from opcd.core.data import check_disjoint, load_examples
from opcd.core.prompts import PromptRenderer
from opcd.core.rollout import HFSampler
from opcd.errors import OpcdError
from opcd.evaluate import respond
from opcd.experience.lessons import LESSON_PROMPTS, WRAPPERS, template
from opcd.experience.pool import seeded_order
from opcd.games import make_game
from opcd.games.episodes import POOL, TRAINING_SEEDS, VALIDATION_SEEDS, game_renderer, play, success_rate
from opcd.tasks.graders import number, without_number


class MathTask:
    """Word problems: an attempt is one sampled answer; validation is greedy accuracy on the validation set."""

    kind = "math"

    def __init__(self, cfg: Config, tokenizer):
        e = cfg.experience
        self.cfg, self.tokenizer = cfg, tokenizer
        self.problems = load_examples(DataConfig(prompts=e.problems), require_context=False)
        self.validation = []
        if e.validation_max:
            data = DataConfig(prompts=e.validation, max_prompts=e.validation_max)
            self.validation = load_examples(data, require_context=False)
            missing = [x.source for x in self.validation if x.answer is None]
            if missing:
                raise OpcdError(f"{missing[0]}: validation problems need an 'answer' to score contexts")
            check_disjoint(self.problems, self.validation, e.problems, e.validation, "validation")
        if e.problems_per_seed > len(self.problems):
            raise OpcdError(
                f"experience.problems_per_seed={e.problems_per_seed} but '{e.problems}' holds {len(self.problems)}"
            )
        wrapper = template(e.wrapper, WRAPPERS["math"], ("context", "prompt"), "experience.wrapper")
        self.renderer = PromptRenderer(
            tokenizer, DataConfig(prompts=e.problems, placement="user", user_template=wrapper)
        )
        if e.feedback:
            ungraded = without_number(self.problems)
            if ungraded:
                raise OpcdError(
                    f"{ungraded[0]}: experience.feedback=true grades every attempt, so each problem needs an "
                    "'answer' holding a number (or set experience.feedback=false)"
                )
        self.lesson = template(
            e.lesson_prompt, LESSON_PROMPTS["graded" if e.feedback else "math"], ("trace", "experience"),
            "experience.lesson_prompt",
        )  # fmt: skip

    def order(self, seed: int) -> list[int]:
        """The problems seed `seed` solves, in order."""
        return seeded_order(len(self.problems), self.cfg.experience.problems_per_seed, seed)

    def name(self, index: int) -> str:
        return self.problems[index].messages[-1]["content"]

    def attempt(self, model, index: int, seed: int) -> tuple[str, bool | None]:
        """Solve problem `index` without context (sampled); returns (trace, success). Success is None (the paper's
        math uses no labels) unless `experience.feedback` grades the answer, which the trace then ends with."""
        e, problem = self.cfg.experience, self.problems[index]
        ids = self.renderer.student_ids(problem.messages)
        rollout = sampled(self.cfg, e.solve_tokens)
        [answer], _ = respond(model, self.tokenizer, [ids], rollout, self.cfg.model.dtype, seed)
        trace = f"Input: {problem.messages[-1]['content']}\nOutput: {answer.strip()}"
        if not e.feedback:
            return trace, None
        success = number(answer, problem.answer)
        verdict = "correct." if success else f"wrong. The correct answer is {problem.answer}."
        return f"{trace}\nResult: {verdict}", success

    def answers(self, model, context: str | None, max_new_tokens: int, desc: str | None = None):
        """Greedy answers to the validation problems and whether each ended, with `context` in the wrapper (None:
        no context)."""
        if context is None:
            prompts = [self.renderer.student_ids(x.messages) for x in self.validation]
        else:
            prompts = [self.renderer.render(x.messages, context).teacher_ids for x in self.validation]
        return respond(
            model, self.tokenizer, prompts, RolloutConfig.greedy(max_new_tokens, 32), self.cfg.model.dtype, desc=desc
        )

    def correct(self, texts: list[str]) -> list[bool]:
        return [number(t, x.answer) for t, x in zip(texts, self.validation, strict=True)]

    def score(self, model, context: str | None) -> float:
        """Greedy accuracy on the validation problems, with `context` in the wrapper (None: no context)."""
        texts, _ = self.answers(model, context, self.cfg.experience.eval_tokens)
        return sum(self.correct(texts)) / len(self.validation)


PAPER_SAMPLING = {"math": (0.6, 1.0), "game": (0.7, 0.8)}  # (temperature, top-p) of the paper's section 7


def sampled(cfg: Config, max_new_tokens: int) -> RolloutConfig:
    """How extraction samples attempts and lessons: `experience.temperature` / `top_p` / `top_k`, where 0 means the
    paper's setting for the task (math T 0.6; games T 0.7, top-p 0.8)."""
    e = cfg.experience
    temperature, top_p = PAPER_SAMPLING["math" if e.task == "math" else "game"]
    return RolloutConfig(
        temperature=e.temperature or temperature,
        top_p=e.top_p or top_p,
        top_k=e.top_k,
        max_new_tokens=max_new_tokens,
        batch_size=0,
    )


class GameTask:
    """Games for extraction: an attempt is one sampled episode without context; a context is scored by the success
    rate of greedy episodes on the validation environments with the context in the wrapper."""

    kind = "game"

    def __init__(self, cfg: Config, tokenizer):
        e = cfg.experience
        self.cfg, self.tokenizer, self.game = cfg, tokenizer, e.task
        make_game(self.game)  # an unknown game fails here, before any model loads
        if e.feedback:
            raise OpcdError(
                "experience.feedback grades math answers; a game's trace already ends with its outcome: remove it"
            )
        wrapper = template(e.wrapper, WRAPPERS["game"], ("context", "prompt"), "experience.wrapper")
        self.renderer = game_renderer(tokenizer, wrapper)
        self.lesson = template(
            e.lesson_prompt, LESSON_PROMPTS["game"], ("trace", "experience"), "experience.lesson_prompt"
        )
        self.validation = [VALIDATION_SEEDS + k for k in range(e.validation_max)]

    def order(self, seed: int) -> list[int]:
        return seeded_order(POOL, self.cfg.experience.problems_per_seed, seed)

    def name(self, index: int) -> str:
        return f"{self.game} environment {TRAINING_SEEDS + index}"

    def attempt(self, model, index: int, seed: int) -> tuple[str, bool]:
        rollout = sampled(self.cfg, self.cfg.experience.solve_tokens)
        sampler = HFSampler.for_model(model, self.tokenizer, rollout, self.cfg.model.dtype)
        [episode] = play(sampler, self.tokenizer, self.renderer, self.game, [TRAINING_SEEDS + index], seed)
        return episode.trace(), episode.success

    def score(self, model, context: str | None) -> float:
        rate, _ = success_rate(
            model, self.tokenizer, self.renderer, self.game, len(self.validation), self.cfg.experience.eval_tokens,
            self.cfg.model.dtype, context, first=VALIDATION_SEEDS,
        )  # fmt: skip
        return rate


def make_task(cfg: Config, tokenizer) -> MathTask | GameTask:
    return MathTask(cfg, tokenizer) if cfg.experience.task == "math" else GameTask(cfg, tokenizer)
