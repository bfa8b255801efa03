"""Loading a promoted model: a checkpoint that carries the code it was trained with.

    checkpoints/<run-id>/manifest.json   sha256 of every file below, metrics, commit, canvas config
    checkpoints/<run-id>/run/            config.json, weights, the run's metrics and evaluations
    checkpoints/<run-id>/code/models/    the `models` package at the run's commit
    checkpoints/best -> <run-id>         an alias (a symlink, replaced atomically)

The agent may have changed any model file during the night, so the weights only fit the code of their
own commit. `load_promoted` checks every file against the manifest (a tampered or incomplete checkpoint is
refused), then imports the snapshot's `models` package in place of the installed one just long enough to
build the model and load its weights. The pixel conventions are not the snapshot's to choose: they are the
contract's (models/pixels.py, pinned), the ones the judge used.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import WorldloopError
from models.files import sha256

if TYPE_CHECKING:  # torch loads only with a model: `harness promote` copies files without it
    import torch

CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"
RUN_DIR = "run"
CODE_DIR = "code"


class PromotedError(WorldloopError):
    """A promoted checkpoint that is missing, incomplete or tampered with."""


@dataclass
class PromotedModel:
    model: Any  # a WorldModel of the snapshot's code, in eval mode
    config: Any  # its ExperimentConfig (the snapshot's class)
    manifest: dict
    path: Path
    to_tensor: Callable  # uint8 canvases -> model input, and back: the contract's (models/pixels.py), the
    to_uint8: Callable  # conventions the model was judged with, whatever its own code says

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]


def hashed_files(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` but the manifest, by posix path (caches left out)."""
    return {
        p.relative_to(root).as_posix(): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts
    }


def known_checkpoints(root: Path) -> list[str]:
    base = Path(root) / CHECKPOINTS_DIR
    return sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) if base.is_dir() else []


def resolve(path_or_alias: str | Path, root: Path = Path(".")) -> Path:
    """A checkpoint directory given as a path, a run id or an alias (e.g. `best`) under checkpoints/."""
    direct = Path(path_or_alias)
    if (direct / MANIFEST).exists():
        return direct.resolve()
    named = Path(root) / CHECKPOINTS_DIR / str(path_or_alias)
    if named.exists():
        return named.resolve()
    known = ", ".join(known_checkpoints(root)) or "none (promote a run with `harness promote <run-id>`)"
    raise PromotedError(f"no promoted checkpoint {str(path_or_alias)!r}; promoted: {known}")


def verify(path: Path) -> dict:
    """The manifest, after checking that every file it lists is there, unchanged, and nothing was added."""
    manifest_file = Path(path) / MANIFEST
    if not manifest_file.exists():
        raise PromotedError(f"{path} is not a promoted checkpoint: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_file.read_text())
        listed: dict[str, str] = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PromotedError(f"{manifest_file} is not a valid manifest ({err})") from None
    present = hashed_files(Path(path))
    missing = sorted(set(listed) - set(present))
    if missing:
        raise PromotedError(f"{path} is incomplete: {missing[0]} is missing" + _more(missing))
    changed = sorted(name for name, digest in listed.items() if present[name] != digest)
    if changed:
        raise PromotedError(f"{path} was modified: {changed[0]} does not match its sha256" + _more(changed))
    added = sorted(set(present) - set(listed))
    if added:
        raise PromotedError(f"{path} has files its manifest does not list: {added[0]}" + _more(added))
    return manifest


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


@contextmanager
def snapshot_package(code_dir: Path) -> Iterator[None]:
    """Make `import models...` resolve to `code_dir/models` inside the block, then restore the installed one.

    Objects created inside keep working afterwards: their classes and functions hold references to the
    snapshot's modules, whatever sys.modules says later.
    """
    saved = {name: mod for name, mod in sys.modules.items() if name == "models" or name.startswith("models.")}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(code_dir))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(code_dir))
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        importlib.invalidate_caches()


def _with_contract(model: Any, config: Any, manifest: dict, path: Path) -> PromotedModel:
    """The loaded model with the installed pixel conventions (imported here, after any snapshot is gone)."""
    from models import pixels

    return PromotedModel(model, config, manifest, path, pixels.to_tensor, pixels.to_uint8)


def load_promoted(
    path_or_alias: str | Path, root: Path = Path("."), device: str | torch.device = "cpu", ema: bool = True
) -> PromotedModel:
    """The promoted model, verified, built with its own code, on `device` in eval mode."""
    path = resolve(path_or_alias, root)
    manifest = verify(path)
    code = path / CODE_DIR
    if not (code / "models" / "checkpoint.py").exists():
        raise PromotedError(f"{path} holds no code snapshot ({CODE_DIR}/models/checkpoint.py)")
    with snapshot_package(code):
        try:
            checkpoint = importlib.import_module("models.checkpoint")
            model, config = checkpoint.load_run(path / RUN_DIR, ema=ema, device=device)
        except Exception as err:  # the snapshot's own error classes are not ours: say it in our words
            raise PromotedError(
                f"{path}: its code cannot load its weights ({type(err).__name__}: {err})"
            ) from None
    return _with_contract(model, config, manifest, path)


def load_checkpoint(
    path_or_alias: str | Path, root: Path = Path("."), device: str | torch.device = "cpu"
) -> PromotedModel:
    """A promoted checkpoint (path, run id or alias), or a plain run directory built with the installed code.

    The run directory form is for models that were never promoted (a benchmark run, a quick experiment);
    nothing vouches that the installed code is the code it was trained with.
    """
    direct = Path(path_or_alias)
    if not (direct / MANIFEST).exists() and (direct / "config.json").exists():
        from models.checkpoint import load_run

        model, config = load_run(direct, ema=True, device=device)
        manifest = {"run_id": direct.name, "files": {}, "metrics": {}}
        return _with_contract(model, config, manifest, direct.resolve())
    return load_promoted(path_or_alias, root, device)
