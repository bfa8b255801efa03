"""Experiment configs: one TOML file says which model, which canvas, which data and how to train.

Every section is a pydantic model with `extra="forbid"`, so a typo is an error that names the field, and the
whole config is saved next to every checkpoint (`config.json`) so a run can be reloaded exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.canvas import CanvasConfig
from models.errors import ConfigError, WorldloopError, describe_validation_error
from models.files import read_toml
from models.task import DataConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransformerConfig(_Strict):
    """What both world models share: a patch transformer over the canvas."""

    patch: int = Field(8, ge=1, le=64, description="Patch side in pixels; must divide every canvas size.")
    width: int = Field(128, ge=8, description="Token width d.")
    depth: int = Field(4, ge=1, le=48)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    position: Literal["rope", "sincos"] = Field(
        "rope",
        description="rope: 2-D rotary positions relative to each step's frame, plus a learned step embedding "
        "(motion is a relative shift); sincos: fixed absolute positions over the whole canvas.",
    )
    residual: bool = Field(
        True,
        description="Predict the target as the last context step plus a change: most pixels do not move, so "
        "the untrained model starts at the copy-last-frame baseline and learns only what the action changes.",
    )

    inference_bf16: bool = Field(
        True,
        description="Predict under bf16 autocast where the hardware does bf16 fast (CUDA; CPUs with "
        "AVX512-BF16 or AMX), float32 elsewhere: 27 DiT predictions 1.6x faster on this project's CPU, "
        "2e-8 apart in mean squared pixel value. A loaded run also keeps its weights in bf16 there "
        "(WorldModel.for_inference): 0.8-0.9x the time again.",
    )

    @model_validator(mode="after")
    def _widths_fit(self) -> TransformerConfig:
        """What the attention and position tables need of the widths (models/blocks.py), checked when the
        config is read rather than when the model is built."""
        if self.width % self.heads:
            raise ValueError(f"heads {self.heads} do not divide width {self.width}")
        if self.position == "sincos" and self.width % 4:
            raise ValueError(f"width {self.width} is not divisible by 4 (sincos position tables)")
        head = self.width // self.heads
        if self.position == "rope" and head % 4:
            raise ValueError(f"head width {head} (width/heads) is not divisible by 4 (2-D rotary positions)")
        return self


class DiTConfig(TransformerConfig):
    """Pixel-space diffusion transformer: the target step is noised, the context is clean."""

    kind: Literal["dit"] = "dit"
    prediction: Literal["x0", "flow"] = Field(
        "x0", description="What the network outputs: the clean target (x0) or the flow velocity (noise - x0)."
    )
    sample_steps: int = Field(2, ge=1, le=1000, description="Denoising steps at inference.")
    time_sampling: Literal["uniform", "logit_normal", "high"] = Field(
        "uniform",
        description="How training draws the noise level t in [0, 1]; 'high' (density 2t) spends more steps "
        "near pure noise, where few-step sampling starts and the context must do all the work.",
    )
    pure_noise_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Fraction of training samples at t = 1 (pure noise): there the context and action are "
        "all the model has, which is what teaches it the dynamics; the rest learn to refine. At 1.0 the "
        "model never trains below t = 1, so it can only sample in one step.",
    )
    dynamic_weight: float = Field(
        0.0,
        ge=0,
        description="Extra loss weight on the target's dynamic pixels (those that change from the last "
        "context step, models/pixels.py's rule, where the judge scores dyn_mse): each counts 1 + this, "
        "normalized per canvas. 0 = plain MSE; most of a frame does not move, so its loss is mostly about "
        "pixels that only need copying.",
    )

    @model_validator(mode="after")
    def _steps_it_was_trained_for(self) -> DiTConfig:
        """Steps after the first start below t = 1: a model trained only at pure noise never saw them."""
        if self.sample_steps > 1 and self.pure_noise_fraction >= 1:
            raise ValueError(
                f"sample_steps {self.sample_steps} needs pure_noise_fraction below 1: a model trained only "
                "at t = 1 samples in one step"
            )
        return self


class GPTConfig(TransformerConfig):
    """Patch transformer: the context, then the target in one step or a block of patch rows at a time."""

    kind: Literal["gpt"] = "gpt"
    rows_per_step: int | None = Field(
        None,
        ge=1,
        description="Target rows of patches predicted together in one decoding step, each block from the "
        "one above: fewer steps decode faster and compound less error. None (the default, no key in the "
        "TOML): the whole target in one step.",
    )


ModelConfig = Annotated[DiTConfig | GPTConfig, Field(discriminator="kind")]


class TrainConfig(_Strict):
    batch_size: int = Field(4, ge=1, description="Small batches, many steps: what works on a CPU budget.")
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW's moment decays.")
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw",
        description="adamw for every parameter, or muon for the weight matrices of the transformer blocks' "
        "attention and MLP and AdamW for the rest (models/optim.py).",
    )
    muon_lr_scale: float = Field(1.0, gt=0, description="With muon: the matrices' lr as a multiple of lr.")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="With muon: its momentum (Nesterov).")
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="0 disables EMA.")
    seed: int = 0
    compile: bool = Field(False, description="torch.compile the model (CUDA only; ignored on CPU).")
    log_every_s: float = Field(5.0, gt=0, description="Seconds between train_log.csv rows.")
    schedule: Literal["cosine", "plateau"] = Field(
        "cosine",
        description="After warmup: cosine decay over the budget, or plateau: the lr cut by plateau_factor "
        "whenever plateau_patience log windows pass without a lower training loss (floor lr * min_lr_ratio).",
    )
    plateau_patience: int = Field(3, ge=1, description="Log windows without a better loss before a cut.")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="What a plateau cut multiplies the lr by.")
    stop_on_divergence: bool = Field(
        False,
        description="Hold out holdout_share of the train split; stop when its loss has not improved for "
        "divergence_patience log windows while the training loss kept falling (overfitting), and keep the "
        "weights of its best window.",
    )
    holdout_share: float = Field(
        0.05, gt=0, lt=0.5, description="Of the train split, for stop_on_divergence."
    )
    divergence_patience: int = Field(
        3, ge=1, description="Log windows of a rising holdout loss before a stop."
    )
    subset_start: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Train on a growing subset: this share of the train split (a fixed random order) at "
        "the start, growing linearly to all of it by the end of the budget; 1 trains on all of it throughout",
    )
    sampling: Literal["uniform", "high_error"] = Field(
        "uniform",
        description="high_error: draw high_error_share of each batch in proportion to each canvas's latest "
        "training loss (needs the model's loss per canvas), the rest uniformly.",
    )
    high_error_share: float = Field(
        0.5, gt=0, le=1, description="With sampling high_error, the share of each batch drawn by loss."
    )
    lr_range_test: bool = Field(
        False,
        description="Start with a learning-rate range test of lr_range_steps steps (models/strategies.py), "
        "then train from the initial weights with the lr it found in place of lr.",
    )
    lr_range_steps: int = Field(100, ge=10, description="Steps of the range test, on the budget.")


class ExperimentConfig(_Strict):
    """A whole experiment. Its `canvas` and `data` sections are the task (models/task.py); the judge reads
    them from the night's experiment config, never from a run's config.json."""

    model: ModelConfig = Field(default_factory=DiTConfig)
    canvas: CanvasConfig = Field(default_factory=CanvasConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _patch_fits_the_canvas(self) -> ExperimentConfig:
        bad = self.canvas.sizes_not_divisible_by(self.model.patch)
        if bad:
            raise ValueError(f"patch {self.model.patch} does not divide {', '.join(bad)}")
        return self


def load_config(path: Path) -> ExperimentConfig:
    """Read and validate an experiment TOML; errors name the file and every bad field."""
    raw = read_toml(path)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {describe_validation_error(err)}") from None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in '90s', '5m', '1.5h', '8h30m' or a plain number of seconds."""
    text = str(text).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"{text!r} is not a duration like 90s, 5m, 1.5h or 8h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)


CONFIG_FILE = "config.json"  # a run directory's experiment config, as trained


def read_config(run_dir: Path) -> ExperimentConfig:
    """The experiment config a run was trained with (its config.json); one line naming the file when bad."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise WorldloopError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    try:
        return ExperimentConfig.model_validate_json(path.read_text())
    except ValidationError as err:
        raise ConfigError(f"{path}: {describe_validation_error(err)}") from None
