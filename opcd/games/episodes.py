"""Multi-turn rollouts: a model plays text games, many episodes side by side, one generate call per turn.

Each turn is its own sample: its prompt is the game so far (earlier boards and the actions taken) plus the current
observation, rendered with the plain chat template (the student's view) or inside the experience wrapper (the
teacher's view, `data.user_template` with `{context}`). The same loop serves extraction (one episode, no context),
scoring a context (greedy, with context), evaluation of a student (greedy, no context) and training rollouts
(sampled; the student plays for OPCD, the teacher with the experience for the off-policy baselines), where
`EpisodeSource` hands the training loop every turn of the episodes played each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm.auto import tqdm

from opcd.config import Config, DataConfig, RolloutConfig
from opcd.core import models
from opcd.core.data import shared_context
from opcd.core.prompts import PromptRenderer
from opcd.core.rollout import HFSampler, Policy, Rollout, Sampler
from opcd.errors import OpcdError
from opcd.games import make_game, parse_action

TURN_PROMPT = (
    "You are playing a game on a grid. Each turn you choose one action.\n\n{history}"
    "Current observation:\n{observation}\n\n"
    "Think briefly if you need to, then give your action in square brackets, e.g. [up]."
)

# environment seeds: the test set is 0..N-1 (the paper: 128 fixed seeds); the others never meet it
VALIDATION_SEEDS = 50_000
TRAINING_SEEDS = 100_000
POOL = 10_000  # training/extraction environments to draw from


def turn_prompt(history: list[tuple[str, str]], observation: str) -> str:
    """The student's view of a turn: earlier boards with the action taken, then the current board."""
    past = "".join(f"Turn {k}:\n{obs}\nYour action: {act}\n\n" for k, (obs, act) in enumerate(history, 1))
    return TURN_PROMPT.format(history=f"The game so far:\n\n{past}" if past else "", observation=observation)


@dataclass
class TurnRecord:
    prompt: str  # the student's user message
    response: list[int]
    text: str
    finished: bool  # the response ended with EOS


@dataclass
class Episode:
    seed: int
    turns: list[TurnRecord] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)  # observation before each turn, then the final one
    success: bool = False
    reason: str = ""

    def trace(self) -> str:
        """What the model is shown when asked for lessons: every round, then the result and why."""
        rounds = "".join(
            f"Round {k}\nObservation:\n{obs}\nYour response: {turn.text.strip()}\n\n"
            for k, (obs, turn) in enumerate(zip(self.observations, self.turns, strict=False), 1)
        )
        final = self.observations[-1] if len(self.observations) > len(self.turns) else ""
        return (
            f"{rounds}Final observation:\n{final}\n\nResult: {'Success' if self.success else 'Failure'}. {self.reason}"
        )


def play(
    sampler: Sampler,
    tokenizer,
    renderer: PromptRenderer,
    game: str,
    seeds: list[int],
    sample_seed: int = 0,
    context: str | None = None,
    desc: str | None = None,
) -> list[Episode]:
    """Play one episode per environment seed with `sampler`, all episodes' turn k in one batch; `context`: the
    teacher's view; a progress bar over the turns with `desc`."""
    games = [make_game(game) for _ in seeds]
    episodes = [Episode(seed) for seed in seeds]
    observations = [g.reset(seed) for g, seed in zip(games, seeds, strict=True)]
    history: list[list[tuple[str, str]]] = [[] for _ in seeds]
    live = list(range(len(seeds)))
    bar = tqdm(total=games[0].max_turns, desc=desc, unit="turn", disable=desc is None, leave=False)
    for turn in range(games[0].max_turns):
        if not live:
            break
        bar.set_postfix(playing=len(live), won=sum(e.success for e in episodes))
        texts = [turn_prompt(history[i], observations[i]) for i in live]
        messages = [[{"role": "user", "content": t}] for t in texts]
        ids = [renderer.render(m, context).teacher_ids if context else renderer.student_ids(m) for m in messages]
        outputs = sampler.generate(ids, sample_seed * 101 + turn)
        still = []
        for i, text, (response, finished) in zip(live, texts, outputs, strict=True):
            decoded = tokenizer.decode(response, skip_special_tokens=True)
            episode = episodes[i]
            episode.observations.append(observations[i])
            episode.turns.append(TurnRecord(text, response, decoded, finished))
            result = games[i].step(decoded)
            action = parse_action(decoded)
            history[i].append((observations[i], f"[{action}]" if action else "(no valid action)"))
            observations[i] = result.observation
            if result.done:
                episode.observations.append(result.observation)
                episode.success, episode.reason = result.reward == 1.0, result.reason
            else:
                still.append(i)
        live = still
        bar.update()
    bar.close()
    return episodes


def game_renderer(tokenizer, wrapper: str) -> PromptRenderer:
    return PromptRenderer(tokenizer, DataConfig(prompts="game", placement="user", user_template=wrapper))


def episode_rollouts(renderer: PromptRenderer, episodes: list[Episode], context: str) -> list[Rollout]:
    """Training samples: every turn of every episode, with the student's and the teacher's view of its prompt."""
    out = []
    for n, episode in enumerate(episodes):
        for turn in episode.turns:
            pair = renderer.render([{"role": "user", "content": turn.prompt}], context)
            out.append(
                Rollout(n, pair.student_ids, pair.teacher_ids, pair.teacher_prefix, turn.response, turn.finished)
            )
    return out


def success_rate(
    model,
    tokenizer,
    renderer,
    game: str,
    n: int,
    max_new_tokens: int,
    dtype: str,
    context=None,
    first: int = 0,
    desc: str | None = None,
):
    """Greedy success on the environments first..first+n-1 (0..: test, VALIDATION_SEEDS..: validation): (rate,
    episodes); a progress bar with `desc`."""
    if n < 1:
        raise OpcdError("the number of test environments must be >= 1")
    sampler = HFSampler.for_model(model, tokenizer, RolloutConfig.greedy(max_new_tokens, 32), dtype)
    episodes = play(sampler, tokenizer, renderer, game, list(range(first, first + n)), 0, context, desc)
    return sum(e.success for e in episodes) / n, episodes


class EpisodeSource:
    """Training rollouts from games (`data.prompts = "game:NAME"`): each step, one episode per drawn environment
    (training seeds, never the test or validation boards), played by the student (OPCD) or by the teacher with the
    experience (off-policy); every turn is a sample, with the student's and the teacher's view of its prompt."""

    size = POOL
    even_across_ranks = False  # episodes end after different numbers of turns

    def __init__(self, cfg: Config, tokenizer):
        self.game = cfg.data.prompts.removeprefix("game:")
        make_game(self.game)  # an unknown game fails before any model loads
        if cfg.rollout.engine == "vllm":
            raise OpcdError("game episodes are played with HF generate: set rollout.engine = 'hf'")
        self.context = shared_context(cfg.data)
        if not self.context.strip():
            raise OpcdError("a game run needs the experience to distill: set data.context or data.context_file")
        self.tokenizer = tokenizer
        self.renderer = game_renderer(tokenizer, cfg.data.user_template)

    def check_lengths(self, window: int, max_new_tokens: int, whose: str = "the model's") -> None:
        """Turn prompts grow as a game goes on; they are not known before it is played."""

    def draw(
        self, policy: Policy, indices: list[int], seed: int, first_chunk: int, rank: int
    ) -> tuple[list[Rollout], dict[str, float]]:
        context = None if policy.on_policy else self.context
        seeds = [TRAINING_SEEDS + i for i in indices]
        episodes = play(policy.sampler, self.tokenizer, self.renderer, self.game, seeds, seed + rank, context)
        rollouts = episode_rollouts(self.renderer, episodes, self.context)
        return rollouts, {"success": sum(e.success for e in episodes), "turns": len(rollouts)}


def source_for(cfg: Config, tokenizer=None) -> EpisodeSource | None:
    """`data.prompts = "game:NAME"`: train on the turns of episodes of that game; None: the prompt rows (the
    training loop's default source). The tokenizer is loaded only for a game."""
    if not cfg.data.prompts.startswith("game:"):
        return None
    return EpisodeSource(cfg, tokenizer or models.load_tokenizer(cfg.model.student))
