"""`harness promote` and `models.load_promoted` on a real little night: round trip, own code, tampering."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from harness.agents.base import FileEdit, Proposal
from harness.agents.replay import ReplayAgent, write_replay
from harness.ledger import Ledger, RunStatus, best_run
from harness.loop import Night
from harness.paths import NightPaths
from harness.promote import promote
from models.checkpoint import load_run
from models.data import load_split
from models.promoted import MANIFEST, PromotedError, load_promoted
from models.world_model import to_tensor
from tests.helpers import assert_one_line_error, harness
from tests.night_project import config_edit, make_project, tiny_night

MARK = 'SNAPSHOT_MARK = "promoted-code"\n'


@pytest.fixture(scope="module")
def night(small_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> NightPaths:
    """baseline (keep), residual + a mark in models/dit.py (keep), residual off (discard), a crash."""
    root = make_project(tmp_path_factory.mktemp("promote"))
    marked = FileEdit(path="models/dit.py", search="import torch\n", replace="import torch\n\n" + MARK)
    proposals = [
        Proposal(
            hypothesis="residual, marked", edits=[config_edit("residual = false", "residual = true"), marked]
        ),
        Proposal(hypothesis="no residual", edits=[config_edit("residual = true", "residual = false")]),
        Proposal(hypothesis="crash", edits=[config_edit("lr = 1e-30", "lr = 1e30")]),
    ]
    replay = write_replay(root.parent / "p.jsonl", proposals)
    Night(tiny_night(root, "p", small_cache, max_runs=4), ReplayAgent(replay)).run()
    paths = NightPaths(root, "p")
    assert [r.status for r in Ledger(paths).read()] == [
        RunStatus.KEEP,
        RunStatus.KEEP,
        RunStatus.DISCARD,
        RunStatus.CRASH,
    ]
    return paths


def predictions(model: torch.nn.Module, dataset: Path, config) -> np.ndarray:
    split = load_split(dataset, config.canvas, "val", config.data.split())
    context = to_tensor(np.asarray(split.canvases[:2]))
    with torch.inference_mode():
        return model.predict(context, torch.arange(3).expand(2, -1), seed=0).numpy()


def test_promote_round_trip_loads_the_run_with_its_own_code(night: NightPaths, small_cache: Path):
    root = night.root
    done = promote(root, "p-001")
    manifest = json.loads((done.path / MANIFEST).read_text())
    assert manifest["run_id"] == "p-001" and manifest["commit"] == Ledger(night).read()[1].commit
    assert manifest["metrics"]["val"]["mse"] == Ledger(night).read()[1].primary
    assert manifest["metrics"]["test"]["split"] == "test"
    assert manifest["canvas"]["frame_width"] == 32
    assert {"run/ema.safetensors", "run/config.json", "code/models/dit.py"} <= set(manifest["files"])
    assert os.readlink(root / "checkpoints/best") == "p-001"

    promoted = models.load_promoted("best", root=root)
    assert promoted.run_id == "p-001"
    dit_module = type(promoted.model).__init__.__globals__
    assert dit_module["SNAPSHOT_MARK"] == "promoted-code"  # the snapshot's code built it
    import models.dit as installed

    assert not hasattr(installed, "SNAPSHOT_MARK")  # and the installed package is untouched
    direct, config = load_run(night.run_dir("p-001"))
    np.testing.assert_array_equal(
        predictions(promoted.model, small_cache, config), predictions(direct, small_cache, config)
    )


def test_a_discarded_run_gets_its_test_metrics_on_promotion(night: NightPaths):
    done = promote(night.root, "p-002", alias="tried")
    assert Ledger(night).read()[2].metrics_test is None
    test = done.manifest["metrics"]["test"]
    assert test["split"] == "test" and test["mse"] > 0
    assert (done.path / "run/eval_test.json").exists()
    assert os.readlink(night.root / "checkpoints/tried") == "p-002"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "run/ema.safetensors").write_bytes(b"\0" * 64), "was modified: run/ema.safetensors"),
        (lambda p: (p / "code/models/blocks.py").unlink(), "incomplete: code/models/blocks.py is missing"),
        (lambda p: (p / "code/models/extra.py").write_text("x = 1\n"), "does not list: code/models/extra.py"),
        (lambda p: (p / MANIFEST).unlink(), "manifest.json is missing"),
    ],
)
def test_a_tampered_or_incomplete_checkpoint_is_refused(night: NightPaths, damage, message: str):
    done = promote(night.root, "p-001", alias=None)
    damage(done.path)
    with pytest.raises(PromotedError, match=message):
        load_promoted(done.path)


def test_promote_cli(night: NightPaths):
    root = night.root
    result = harness("promote", "p-000", "--alias", "base", "--root", root)
    assert result.returncode == 0, result.stderr
    assert "promoted p-000" in result.stdout and os.readlink(root / "checkpoints/base") == "p-000"
    listing = harness("promote", "--list", "--root", root).stdout
    assert "p-000" in listing and "base" in listing
    assert_one_line_error(
        harness("promote", "p-404", "--root", root), "unknown run 'p-404'", "known runs: p-000"
    )
    assert_one_line_error(harness("promote", "p-003", "--root", root), "p-003 cannot be promoted", "crash")
    best = best_run(Ledger(night).read()).run_id
    result = harness("promote", "--best", "--alias", "top", "--root", root)
    assert result.returncode == 0, result.stderr
    assert f"promoted {best}" in result.stdout and os.readlink(root / "checkpoints/top") == best
    assert_one_line_error(harness("promote", "--best", "--tag", "nope", "--root", root), "no night tagged")
    with pytest.raises(PromotedError, match="no promoted checkpoint 'nope'; promoted: "):
        load_promoted("nope", root=root)
