"""The optimizer a training steps: AdamW for every parameter, or Muon for the weight matrices of the
transformer blocks' attention and MLP beside AdamW for the rest (`train.optimizer` in the experiment TOML).

Muon (Keller Jordan, 2024; `torch.optim.Muon`) replaces each update of a weight matrix by the nearest
orthogonal matrix to its momentum (a few Newton-Schulz iterations in bf16), so every direction of the
matrix learns at the same rate instead of the few that dominate the gradient. It is meant for the hidden
matrices only: embeddings, the output layer and every vector (biases, norms, learned tokens) stay with
AdamW, as its authors prescribe, and so does the DiT's adaLN modulation (`hidden_matrices` says why). Its
step size follows Moonshot's rule (`adjust_lr_fn="match_rms_adamw"`), which gives its updates the RMS of
AdamW's, so `train.lr` means the same for both and `train.muon_lr_scale` multiplies it for the matrices.
"""

from __future__ import annotations

import torch
from torch import nn

from models.blocks import MLP, Attention
from models.config import TrainConfig
from models.errors import WorldloopError


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of the attention and MLP layers in `model.blocks`: Muon's share. The DiT's adaLN
    modulation stays with AdamW: it maps the conditioning to scales, shifts and gates, and side by side at 5
    CPU-minutes Muon on it as well did worse (val loss 0.00329 against 0.00268, benchmarks/RESULTS.md)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module):
        raise WorldloopError(
            f"train.optimizer = muon needs the model's transformer blocks as `self.blocks`; "
            f"{type(model).__name__} has none"
        )
    layers = [m for m in blocks.modules() if isinstance(m, Attention | MLP)]
    matrices = [p for layer in layers for p in layer.parameters() if p.ndim == 2 and p.requires_grad]
    if not matrices:
        raise WorldloopError(
            f"train.optimizer = muon: {type(model).__name__}.blocks holds no Attention or MLP "
            "(models/blocks.py) with a weight matrix"
        )
    return matrices


class Optimizer:
    """One or two torch optimizers stepped as one, each with its multiple of the scheduled learning rate."""

    def __init__(self, parts: list[tuple[torch.optim.Optimizer, float]]) -> None:
        self.parts = parts

    def set_lr(self, lr: float) -> None:
        for optimizer, scale in self.parts:
            for group in optimizer.param_groups:
                group["lr"] = lr * scale

    def zero_grad(self) -> None:
        for optimizer, _ in self.parts:
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for optimizer, _ in self.parts:
            optimizer.step()

    def reset(self) -> None:
        """Forget the moments (after weights are replaced, as the lr range test does)."""
        for optimizer, _ in self.parts:
            optimizer.state.clear()


def build_optimizer(model: nn.Module, train: TrainConfig, device: torch.device) -> Optimizer:
    """`train.optimizer`'s optimizer over every trainable parameter of `model`: with muon, Muon takes the
    hidden matrices and AdamW the rest; with adamw, AdamW takes them all."""
    matrices = hidden_matrices(model) if train.optimizer == "muon" else []
    chosen = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    fused = device.type in ("cuda", "cpu")  # one kernel for all parameters: 8.4 -> 2.8 ms a step on a CPU
    adamw = torch.optim.AdamW(
        rest, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay, fused=fused
    )
    if not matrices:
        return Optimizer([(adamw, 1.0)])
    muon = torch.optim.Muon(
        matrices,
        lr=train.lr * train.muon_lr_scale,
        weight_decay=train.weight_decay,
        momentum=train.muon_momentum,
        adjust_lr_fn="match_rms_adamw",
    )
    return Optimizer([(adamw, 1.0), (muon, train.muon_lr_scale)])
