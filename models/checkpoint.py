"""Build a world model from its config, and save / load a run directory.

A run directory holds `config.json` (the whole ExperimentConfig: model, canvas, data, train),
`model.safetensors` (the trained weights) and, when EMA is on, `ema.safetensors` (what evaluation uses).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.config import CONFIG_FILE, ExperimentConfig, read_config
from models.errors import ConfigError, WorldloopError
from models.files import replacing
from models.files import write_json as write_json  # training writes its config.json and metrics with it
from models.world_model import WorldModel

WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
RENAMED_WEIGHTS = {"action.weight": "action_embed.weight"}
"""Weights saved under an earlier name -> the name today (the DiT's action embedding was `action` before
2026-12-05, when both models took the name `action_embed`): a run trained before still loads."""


def build_model(config: ExperimentConfig) -> WorldModel:
    """A fresh model of the configured kind."""
    kind = config.model.kind
    if kind == "dit":
        from models.dit import DiT

        return DiT(config.model, config.canvas)
    if kind == "gpt":
        from models.gpt import GPT

        return GPT(config.model, config.canvas)
    raise ConfigError(f"unknown model kind {kind!r}")


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Atomic safetensors write: a reader never sees half a checkpoint."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with replacing(path) as tmp:
        save_file(state, str(tmp))


def load_run(
    run_dir: Path, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[WorldModel, ExperimentConfig]:
    """The model of a run directory, ready to predict (`WorldModel.for_inference`: eval mode, bf16 weights
    where predictions run in bf16); the EMA weights when present and asked for."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    weights = run_dir / (EMA_FILE if ema and (run_dir / EMA_FILE).exists() else WEIGHTS_FILE)
    if not weights.exists():
        raise WorldloopError(f"{run_dir}: no weights ({WEIGHTS_FILE}); did training finish?")
    model = build_model(config)
    try:
        state = load_file(str(weights), device=str(device))
        model.load_state_dict({RENAMED_WEIGHTS.get(name, name): value for name, value in state.items()})
    except (RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()[0]
        raise WorldloopError(f"{weights}: weights do not fit the model in {CONFIG_FILE} ({first})") from None
    return model.to(device).for_inference(), config
