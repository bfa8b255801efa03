"""models/optim.py: which parameters Muon takes, the lr each optimizer gets, and that Muon's updates of a
matrix are orthogonalized and learn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.checkpoint import build_model
from models.config import ExperimentConfig, TrainConfig, load_config
from models.data import load_split
from models.errors import WorldloopError
from models.optim import build_optimizer, hidden_matrices
from models.world_model import to_tensor
from tests.helpers import train_on_batch, write_config

CPU = torch.device("cpu")


def tiny_model(tmp_path: Path, kind: str, **model: object) -> tuple[nn.Module, ExperimentConfig]:
    config = load_config(write_config(tmp_path / "tiny.toml", tmp_path, kind))
    config = config.model_copy(update={"model": config.model.model_copy(update=model)})
    torch.manual_seed(0)
    return build_model(config), config


@pytest.mark.parametrize("kind", ["dit", "gpt"])
def test_muon_takes_the_blocks_weight_matrices_and_adamw_everything_else(tmp_path: Path, kind: str):
    model, config = tiny_model(tmp_path, kind, depth=2)
    train = config.train.model_copy(update={"optimizer": "muon", "muon_lr_scale": 4.0})
    (adamw, adamw_scale), (muon, muon_scale) = build_optimizer(model, train, CPU).parts
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    names = {id(p): name for name, p in model.named_parameters()}
    by_muon = sorted(names[id(p)] for group in muon.param_groups for p in group["params"])
    by_adamw = sorted(names[id(p)] for group in adamw.param_groups for p in group["params"])
    layers = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.out")
    assert by_muon == sorted(f"blocks.{i}.{layer}.weight" for i in range(2) for layer in layers)
    assert sorted(by_muon + by_adamw) == sorted(names.values())  # every parameter, once
    assert ("blocks.0.ada.1.weight" in by_adamw) == (kind == "dit")  # the adaLN modulation: AdamW's
    assert (adamw_scale, muon_scale) == (1.0, 4.0)


def test_the_scheduled_lr_reaches_adamw_as_is_and_muon_times_its_scale(tmp_path: Path):
    model, config = tiny_model(tmp_path, "dit")
    train = config.train.model_copy(update={"optimizer": "muon", "muon_lr_scale": 3.0})
    optimizer = build_optimizer(model, train, CPU)
    optimizer.set_lr(2e-4)
    (adamw, _), (muon, _) = optimizer.parts
    assert [g["lr"] for g in adamw.param_groups] == [2e-4]
    assert [g["lr"] for g in muon.param_groups] == [pytest.approx(6e-4)]
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


def a_batch(dataset: Path, config: ExperimentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    split = load_split(dataset, config.canvas, "train")
    return to_tensor(split.canvases[:4]), torch.as_tensor(split.actions[:4])


def last_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], train: TrainConfig) -> dict:
    """Three steps of `train`'s optimizer on `batch` (on the first, only the zeroed output layer has a
    gradient); each parameter's change in the last."""
    optimizer = build_optimizer(model, train, CPU)
    torch.manual_seed(0)
    for _ in range(3):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer.zero_grad()
        model.loss(*batch).mean().backward()
        optimizer.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def stable_rank(change: torch.Tensor) -> float:
    """How many directions a change moves the matrix along: squared Frobenius over squared spectral norm."""
    values = torch.linalg.svdvals(change.double())
    return float((values**2).sum() / values.max() ** 2)


def test_muon_orthogonalizes_a_matrix_update_where_adamw_does_not(small_cache: Path, tmp_path: Path):
    """Newton-Schulz pushes the update's singular values toward 1, so it moves the matrix along many
    directions at once; AdamW's follows the gradient's few strong directions (stable ranks ~6 and ~1.6
    here, a 32 x 128 matrix, third step)."""
    model, config = tiny_model(tmp_path, "dit")
    batch, key = a_batch(small_cache, config), "blocks.0.mlp.fc.weight"
    muon = last_step(model, batch, config.train.model_copy(update={"optimizer": "muon"}))[key]
    model, _ = tiny_model(tmp_path, "dit")
    adamw = last_step(model, batch, config.train)[key]
    assert stable_rank(muon) > 2 * stable_rank(adamw) and stable_rank(adamw) > 1.01


@pytest.mark.parametrize("kind", ["dit", "gpt"])
def test_muon_overfits_a_batch(small_cache: Path, tmp_path: Path, kind: str):
    model, config = tiny_model(tmp_path, kind)
    train = config.train.model_copy(update={"optimizer": "muon", "lr": 3e-3})
    canvases, actions = a_batch(small_cache, config)
    optimizer = build_optimizer(model, train, CPU)
    torch.manual_seed(0)
    losses = train_on_batch(model, optimizer, canvases, actions, steps=80)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])  # 0.39x (DiT) and 0.08x (GPT) here


def test_muon_needs_the_models_blocks():
    class NoBlocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

    with pytest.raises(WorldloopError, match="NoBlocks has none"):
        hidden_matrices(NoBlocks())
    no_layers = NoBlocks()
    no_layers.blocks = nn.ModuleList([nn.Linear(4, 4)])
    with pytest.raises(WorldloopError, match="holds no Attention or MLP"):
        hidden_matrices(no_layers)
