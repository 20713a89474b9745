"""The engine: models, prompts, rollouts, scoring, losses, teachers, checkpoints and the training loop.

It knows nothing of games, experience, reports or recipes; those sit above it and hand the loop a `RolloutSource`."""
