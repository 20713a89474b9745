"""One `log(step, metrics)`: appends to `metrics.jsonl` and forwards to the trackers of `train.report_to`.

Keys are namespaced (`loss/`, `kl/`, `gap/`, `rollout/`, `time/`, `optim/`, `memory/`). On resume, rows past the resumed
step are dropped first, so the file reads like the uninterrupted run's. Sample answers (`log_samples`) go to
`samples.jsonl` and to each tracker as a table.

Trackers speak their own library's API and are optional: TensorBoard (a main dependency), Weights & Biases, trackio
and MLflow (`pip install opcd-lm[trackers]`); a missing one stops the run before step 1 with the line to install it.
Each reads its usual environment (`WANDB_PROJECT`, `WANDB_MODE=offline`, `MLFLOW_TRACKING_URI`, ...); the project is
`opcd` unless the environment says otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from opcd.config import trackers
from opcd.errors import OpcdError

SAMPLE_COLUMNS = ["step", "prompt", "student", "teacher"]
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow-skinny"}


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _keep_until(path: Path, step: int) -> None:
    """Drop the rows of `path` (JSON lines with a "step") after `step`, atomically."""
    kept = [row for row in read_metrics(path) if row["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, path)


def _require(name: str):
    module = "torch.utils.tensorboard" if name == "tensorboard" else name
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OpcdError(
            f"train.report_to names '{name}', which is not installed: pip install {PACKAGES[name]} "
            "(or leave it out of train.report_to)"
        ) from None


def check_trackers_installed(report_to: str) -> None:
    """Before any model loads: every tracker named can be imported."""
    for name in trackers(report_to):
        _require(name)


class TensorBoard:
    def __init__(self, run_dir: Path, resume_step: int, config: dict):
        self.writer = _require("tensorboard").SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def samples(self, step: int, rows: list[list]) -> None:
        head = "| " + " | ".join(SAMPLE_COLUMNS[1:]) + " |\n|---|---|---|\n"
        cells = ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r[1:]) + " |" for r in rows]
        self.writer.add_text("samples", head + "\n".join(cells), step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run_dir: Path, resume_step: int, config: dict):
        self.wandb = _require("wandb")
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", "opcd"),
            name=run_dir.name,
            dir=str(run_dir),
            config=config,
            id=os.environ.get("WANDB_RUN_ID"),
            resume="allow",
        )

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def samples(self, step: int, rows: list[list]) -> None:
        self.run.log({"samples": self.wandb.Table(columns=SAMPLE_COLUMNS, data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackio:
    def __init__(self, run_dir: Path, resume_step: int, config: dict):
        self.trackio = _require("trackio")
        self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", "opcd"), name=run_dir.name, config=config)

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        self.trackio.log(metrics, step=step)

    def samples(self, step: int, rows: list[list]) -> None:
        import pandas

        table = self.trackio.Table(dataframe=pandas.DataFrame(rows, columns=SAMPLE_COLUMNS))
        self.trackio.log({"samples": table}, step=step)

    def close(self) -> None:
        self.trackio.finish()


class MLflow:
    def __init__(self, run_dir: Path, resume_step: int, config: dict):
        self.mlflow = _require("mlflow")
        self.mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "opcd"))
        self.mlflow.start_run(run_name=run_dir.name)
        flat = {f"{section}.{k}": v for section, values in config.items() for k, v in values.items()}
        self.mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def samples(self, step: int, rows: list[list]) -> None:
        columns = {name: [r[i] for r in rows] for i, name in enumerate(SAMPLE_COLUMNS)}
        self.mlflow.log_table(columns, artifact_file=f"samples/step-{step:06d}.json")

    def close(self) -> None:
        self.mlflow.end_run()


TRACKER_CLASSES = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio, "mlflow": MLflow}


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int = 0, report_to: str = "tensorboard", config: dict | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        for path in (self.path, self.samples_path):
            _keep_until(path, resume_step)
        self.trackers = [TRACKER_CLASSES[name](run_dir, resume_step, config or {}) for name in trackers(report_to)]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        for tracker in self.trackers:
            tracker.scalars(step, {k: v for k, v in row.items() if k != "step"})

    def log_samples(self, step: int, samples: list[tuple[str, str, str]]) -> None:
        """(prompt, student answer, teacher answer) rows of one step (none: nothing is logged)."""
        if not samples:
            return
        rows = [[step, *sample] for sample in samples]
        with open(self.samples_path, "a") as f:
            f.writelines(json.dumps(dict(zip(SAMPLE_COLUMNS, r, strict=True))) + "\n" for r in rows)
        for tracker in self.trackers:
            tracker.samples(step, rows)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
