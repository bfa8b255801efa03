"""The task a night's runs are judged on: the canvas, the dataset and its episode split.

Judging code (pinned): the harness reads the task from the `[canvas]` and `[data]` sections of the night's
experiment config as committed at the night's base, with this module only, never from a run's
`config.json` or from code a proposal may edit. A model that trains on another split or canvas is still
judged on this one.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.canvas import CanvasConfig
from models.data import SplitConfig
from models.errors import ConfigError, describe_validation_error
from models.files import read_toml

TASK_SECTIONS = ("canvas", "data")
"""The sections of an experiment config that define the task: a proposal may not change them."""


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Path = Field(
        Path("data/sim"), description="LeRobot v3.0 dataset directory (relative to the cwd)."
    )
    split_seed: int = 0
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)

    def split(self) -> SplitConfig:
        return SplitConfig(
            seed=self.split_seed, val_fraction=self.val_fraction, test_fraction=self.test_fraction
        )


class Task(BaseModel):
    """What every run of a night is judged on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canvas: CanvasConfig = Field(default_factory=CanvasConfig)
    data: DataConfig = Field(default_factory=DataConfig)


def default_experiment(model_kind: str) -> str:
    """The experiment config (path in a tree) a model kind trains with, and is judged on, by default."""
    return f"experiments/{model_kind}.toml"


def load_task(experiment: Path) -> Task:
    """The task of an experiment config: its [canvas] and [data] sections (defaults where absent).

    The other sections (model, training) are the agent's business and are not read: they may hold fields
    only the agent's `models/config.py` knows.
    """
    raw = read_toml(experiment)
    try:
        return Task.model_validate({k: raw[k] for k in TASK_SECTIONS if k in raw})
    except ValidationError as err:
        raise ConfigError(f"{experiment}: {describe_validation_error(err)}") from None
