"""The training strategies a run can switch on in its `[train]` section, one piece each, used by
models/train.py's loop: the learning-rate schedule (cosine or reduce-on-plateau), the learning-rate range
test, stopping when held-out and training loss part ways, training on a growing subset, and drawing the
canvases with the highest loss more often. The ideas a person tried by hand on this problem, as options any
agent can set (experiments/space.toml lists them for the offline agent).
"""

from __future__ import annotations

import math

import torch

from models.config import TrainConfig
from models.world_model import WorldModel, to_tensor


def learning_rate(train: TrainConfig, step: int, progress: float, cuts: int = 0) -> float:
    """Linear warmup by steps, then (schedule cosine) cosine by the fraction of the budget used, on the
    budget's clock, or (schedule plateau) the lr cut `cuts` times by plateau_factor, never below
    lr * min_lr_ratio."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.schedule == "plateau":
        return train.lr * max(train.min_lr_ratio, train.plateau_factor**cuts)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return train.lr * (train.min_lr_ratio + (1.0 - train.min_lr_ratio) * cosine)


class PlateauCuts:
    """Reduce-on-plateau without a validation set in the loop: a window's mean training loss that is not
    the best yet, `patience` windows in a row, cuts the lr once more."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.waited, self.cuts = patience, math.inf, 0, 0

    def window(self, mean_loss: float) -> int:
        if mean_loss < self.best:
            self.best, self.waited = mean_loss, 0
        else:
            self.waited += 1
            if self.waited >= self.patience:
                self.cuts, self.waited = self.cuts + 1, 0
        return self.cuts


class Divergence:
    """Stopping when training and held-out losses part ways: the held-out loss has not improved for
    `patience` checks while the training loss is below where it stood at the held-out best. Keeps a copy of
    the weights (and the EMA's) at the held-out best, which the run then saves."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.waited, self.train_at_best = patience, math.inf, 0, math.inf
        self.weights: list[dict[str, torch.Tensor]] | None = None

    def check(self, held_out: float, train_loss: float, models: list[torch.nn.Module]) -> bool:
        """Record one check; True when training should stop."""
        if held_out < self.best:
            self.best, self.waited, self.train_at_best = held_out, 0, train_loss
            self.weights = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
            return False
        self.waited += 1
        return self.waited >= self.patience and train_loss < self.train_at_best

    def restore(self, models: list[torch.nn.Module]) -> None:
        for model, weights in zip(models, self.weights or [], strict=False):
            model.load_state_dict(weights)


HOLDOUT_BATCH = 64  # held-out canvases scored at each check, with the same noise every time


@torch.no_grad()
def held_out_loss(
    model: WorldModel, canvases: torch.Tensor, actions: torch.Tensor, device: torch.device
) -> float:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return float(model.loss(to_tensor(canvases, device), actions.to(device)).mean())


def subset_size(train: TrainConfig, count: int, progress: float) -> int:
    """How many canvases (of `count`) a step samples from: `subset_start` of them at the start, all of them
    by the end of the budget."""
    share = train.subset_start + (1.0 - train.subset_start) * min(max(progress, 0.0), 1.0)
    return max(1, min(count, math.ceil(count * share)))


LR_RANGE = (1e-5, 1e-2)  # where the learning-rate range test starts and ends


class LRRangeTest:
    """The learning-rate range test (Smith 2017; fastai's `lr_find`) at the start of a run.

    `steps` optimizer steps with the lr growing exponentially from LR_RANGE[0] to LR_RANGE[1], ended early
    once the smoothed loss passes 4x its lowest or turns non-finite. The loop then puts the weights and the
    optimizer back where they started and trains with `found` in place of `train.lr`: a tenth of the lr at
    the lowest smoothed loss, the usual rule of thumb (the lowest point is already past the fastest
    descent). Its steps are on the budget, like every other step.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.lrs: list[float] = []
        self.smoothed: list[float] = []
        self.found: float | None = None
        self._average = 0.0

    @property
    def running(self) -> bool:
        return self.found is None

    @property
    def lr(self) -> float:
        low, high = LR_RANGE
        return low * (high / low) ** (len(self.lrs) / max(self.steps - 1, 1))

    def record(self, lr: float, loss: float) -> bool:
        """One step's loss at `lr`; True when the test has just ended (`found` is then set)."""
        finite = math.isfinite(loss)
        if finite:
            self._average = 0.9 * self._average + 0.1 * loss
            self.smoothed.append(self._average / (1 - 0.9 ** (len(self.smoothed) + 1)))  # bias-corrected
            self.lrs.append(lr)
        exploded = finite and self.smoothed[-1] > 4 * min(self.smoothed)
        if finite and not exploded and len(self.lrs) < self.steps:
            return False
        if self.lrs:
            lowest = min(range(len(self.smoothed)), key=self.smoothed.__getitem__)
            self.found = self.lrs[lowest] / 10
        else:
            self.found = LR_RANGE[0]
        return True


class HighErrorSampler:
    """Drawing the canvases the model gets most wrong more often (`train.sampling = "high_error"`).

    `share` of each batch is drawn in proportion to each canvas's latest training loss, the rest uniformly.
    A canvas not drawn yet counts as the highest loss seen, so every canvas gets a first look. A canvas's
    latest loss is one noisy reading (for the DiT, one draw of noise level and noise), which is why part of
    every batch stays uniform. The validation mse weighs every canvas alike: whether this helps is the
    experiment.
    """

    def __init__(self, count: int, share: float, generator: torch.Generator) -> None:
        self.losses = torch.full((count,), math.nan)
        self.share, self.generator = share, generator

    def draw(self, candidates: torch.Tensor, batch_size: int) -> torch.Tensor:
        """`batch_size` indices from `candidates` (the canvases a step may draw from)."""
        hard = round(batch_size * self.share)
        uniform = candidates[torch.randint(len(candidates), (batch_size - hard,), generator=self.generator)]
        if hard == 0:
            return uniform
        losses = self.losses[candidates]
        seen = ~torch.isnan(losses)
        highest = losses[seen].max() if bool(seen.any()) else torch.tensor(1.0)
        weights = torch.where(seen, losses, highest).clamp_min(1e-12)
        picked = torch.multinomial(weights, hard, replacement=True, generator=self.generator)
        return torch.cat([candidates[picked], uniform])

    def record(self, index: torch.Tensor, losses: torch.Tensor) -> None:
        """The per-canvas losses (B,) of the batch drawn at `index`."""
        self.losses[index] = losses.detach().float().cpu()
