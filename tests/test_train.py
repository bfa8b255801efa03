"""`python -m models.train` as the harness runs it: a real subprocess on a tiny config and real data."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, build_model, load_run, save_weights, write_json
from models.config import ExperimentConfig, load_config, parse_duration
from models.data import load_split
from models.errors import EXIT_NAN, ConfigError, DatasetError
from models.evaluate import evaluate_run
from models.openmp import DEFAULT_THREADS
from models.strategies import (
    LR_RANGE,
    Divergence,
    HighErrorSampler,
    LRRangeTest,
    PlateauCuts,
    learning_rate,
    subset_size,
)
from models.task import Task
from models.train import flush_subnormals
from models.world_model import to_tensor
from tests.helpers import run_module, run_train, train_on_batch, write_config


@pytest.mark.parametrize(("kind", "budget"), [("dit", 5.0), ("gpt", 3.0)])
def test_budget_is_respected_and_outputs_are_written(
    small_cache: Path, tmp_path: Path, kind: str, budget: float
):
    config = write_config(tmp_path / "tiny.toml", small_cache, kind)
    result = run_train(config, tmp_path / "run", budget=f"{budget}s")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    # the budget is CPU time of the loop on each of its threads (DEFAULT_THREADS, at most one per core it may
    # use: under xdist a worker has one core, alone it may have more); it stops at the first step past it
    threads = metrics["threads"]
    assert metrics["clock"] == "cpu" and threads == min(DEFAULT_THREADS, len(os.sched_getaffinity(0)))
    assert metrics["budget_cpu_seconds"] == budget * threads
    assert budget * threads <= metrics["cpu_seconds"] < budget * threads + 0.5
    assert metrics["steps"] > 10 and metrics["samples"] == metrics["steps"] * 4
    assert metrics["model_kind"] == kind and metrics["val_loss"] > 0 and metrics["seed"] == 0
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    assert len(rows) >= 3
    assert [int(r["step"]) for r in rows] == sorted(int(r["step"]) for r in rows)
    assert int(rows[-1]["step"]) == metrics["steps"]
    # time_s is the budget's clock in seconds of budget (CPU-s / threads): it ends at the budget
    times = [float(r["time_s"]) for r in rows]
    assert times == sorted(times) and times[-1] < budget + 0.5
    cpu = [float(r["cpu_s"]) for r in rows]
    assert cpu == sorted(cpu) and cpu[-1] >= times[-1] * threads
    saved = ExperimentConfig.model_validate_json((run / "config.json").read_text())
    assert saved == load_config(config)
    assert (run / "model.safetensors").exists() and (run / "ema.safetensors").exists()


@pytest.mark.parametrize("kind", ["dit", "gpt"])
def test_checkpoint_round_trip_reproduces_predictions_bit_for_bit(
    small_cache: Path, tmp_path: Path, kind: str
):
    config = load_config(write_config(tmp_path / "tiny.toml", small_cache, kind))
    val = load_split(small_cache, config.canvas, "val")
    context, actions = to_tensor(val.canvases[:3]), torch.arange(3).repeat(3, 1)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_on_batch(model, optimizer, to_tensor(val.canvases[:4]), torch.as_tensor(val.actions[:4]), steps=5)
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / CONFIG_FILE, config.model_dump(mode="json"))
    save_weights(model, run / WEIGHTS_FILE)
    before = model.for_inference().predict(context, actions, seed=5)  # ready to predict, as loaded runs are
    loaded, _ = load_run(run)
    assert torch.equal(loaded.predict(context, actions, seed=5), before)


def test_training_writes_ema_and_raw_weights(small_cache: Path, tmp_path: Path):
    config = write_config(tmp_path / "tiny.toml", small_cache)
    assert run_train(config, tmp_path / "run", budget="2s").returncode == 0
    ema, loaded = load_run(tmp_path / "run")
    raw, _ = load_run(tmp_path / "run", ema=False)
    val = load_split(small_cache, loaded.canvas, "val")
    context, actions = to_tensor(val.canvases[:3]), torch.arange(3).repeat(3, 1)
    assert not torch.equal(raw.predict(context, actions, seed=5), ema.predict(context, actions, seed=5))


def test_a_training_process_treats_subnormal_floats_as_zero():
    """models.train flushes subnormals (a trained DiT's step 136 -> 102 ms): 1e-20 squared is 1e-40, below
    float32's smallest normal number, and comes out as zero."""
    tiny = torch.tensor([1e-20])
    torch.set_flush_denormal(False)  # as every process starts
    assert (tiny * tiny).item() > 0  # a subnormal
    try:
        flush_subnormals()
        assert (tiny * tiny).item() == 0.0
        assert torch.tensor([1e-323], dtype=torch.float64).item() == 0.0
    finally:
        torch.set_flush_denormal(False)  # the rest of this test process computes as it did


def test_checkpoint_whose_cameras_the_dataset_lacks_is_refused(small_cache: Path, tmp_path: Path):
    config = load_config(write_config(tmp_path / "tiny.toml", small_cache))
    top = config.model_copy(update={"canvas": config.canvas.model_copy(update={"cameras": ("wrist", "top")})})
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / CONFIG_FILE, top.model_dump(mode="json"))
    save_weights(build_model(top), run / WEIGHTS_FILE)
    with pytest.raises(
        DatasetError, match=r"camera\(s\) \['top'\] not in .*info.json; it has \['wrist', 'base'\]"
    ):
        evaluate_run(run, "val", task=Task(canvas=top.canvas, data=top.data))


def test_the_wall_clock_counts_wall_time_and_seed_overrides_the_config(small_cache: Path, tmp_path: Path):
    """`--clock wall` is what a GPU run gets (and the old behaviour on CPU); `--seed` beats [train] seed."""
    config = write_config(tmp_path / "tiny.toml", small_cache, "gpt", seed=1)
    run = tmp_path / "run"
    args = ("--config", config, "--budget", "2s", "--out", run, "--clock", "wall", "--seed", 9, "--quiet")
    result = run_module("models.train", *args)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["clock"] == "wall" and metrics["budget_cpu_seconds"] is None
    assert metrics["wall_seconds"] >= 2.0 and metrics["budget_seconds"] == 2.0
    assert metrics["seed"] == 9 and json.loads((run / "config.json").read_text())["train"]["seed"] == 9
    assert metrics["cpu_seconds"] > 0 and metrics["warmup_seconds"] > 0


def test_nan_loss_exits_with_its_own_code(small_cache: Path, tmp_path: Path):
    config = write_config(tmp_path / "tiny.toml", small_cache, lr=1e30, grad_clip=0.0, warmup_steps=0)
    result = run_train(config, tmp_path / "run", budget="20s")
    assert result.returncode == EXIT_NAN, result.stderr
    assert "loss became nan" in result.stderr.lower() or "loss became inf" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_bad_config_lists_every_bad_field(tmp_path: Path, sim_dataset: Path):
    config = write_config(tmp_path / "bad.toml", sim_dataset, batch_size=0, learning_rate=0.1)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert "train.batch_size" in str(info.value) and "train.learning_rate" in str(info.value)
    result = run_train(config, tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.batch_size" in result.stderr and "train.learning_rate" in result.stderr


def test_missing_cache_says_how_to_build_it(sim_dataset: Path, tmp_path: Path):
    config = write_config(tmp_path / "tiny.toml", sim_dataset)
    text = config.read_text().replace(
        "frame_width = 32\nframe_height = 32", "frame_width = 24\nframe_height = 24"
    )
    config.write_text(text.replace("patch = 8", "patch = 4"))
    result = run_train(config, tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"harness data build {sim_dataset} --config {config}" in result.stderr


def test_learning_rate_warms_up_then_follows_the_budget():
    train = ExperimentConfig().train.model_copy(update={"lr": 1e-3, "warmup_steps": 10, "min_lr_ratio": 0.1})
    assert learning_rate(train, 0, 0.0) == pytest.approx(1e-4)
    assert learning_rate(train, 10, 0.0) == pytest.approx(1e-3)
    assert learning_rate(train, 500, 0.5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(train, 900, 1.0) == pytest.approx(1e-4)


def test_a_plateau_schedule_cuts_the_lr_after_patience_windows_without_a_better_loss():
    train = ExperimentConfig().train.model_copy(
        update={
            "lr": 1e-3,
            "warmup_steps": 0,
            "min_lr_ratio": 0.1,
            "schedule": "plateau",
            "plateau_factor": 0.5,
        }
    )
    cuts = PlateauCuts(patience=2)
    assert [cuts.window(loss) for loss in (1.0, 0.9, 0.95, 0.92, 0.8, 0.85, 0.81, 0.9)] == [
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        2,
    ]
    assert [learning_rate(train, 100, 0.9, c) for c in (0, 1, 2, 5)] == pytest.approx(
        [1e-3, 5e-4, 2.5e-4, 1e-4]
    )


def test_a_growing_subset_starts_at_its_share_and_ends_with_the_whole_split():
    train = ExperimentConfig().train.model_copy(update={"subset_start": 0.25})
    assert [subset_size(train, 100, p) for p in (0.0, 0.5, 1.0, 1.5)] == [25, 63, 100, 100]
    assert subset_size(train.model_copy(update={"subset_start": 0.001}), 10, 0.0) == 1


def test_training_with_the_plateau_schedule_and_a_growing_subset(small_cache: Path, tmp_path: Path):
    """A learning rate that learns nothing: the training loss stops improving, and the lr is cut."""
    options = {"schedule": "plateau", "plateau_patience": 1, "subset_start": 0.3, "lr": 1e-30}
    config = write_config(tmp_path / "p.toml", small_cache, warmup_steps=0, log_every_s=0.05, **options)
    result = run_train(config, tmp_path / "run", budget="1s")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "run" / "train_log.csv", newline="") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f) if row["lr"]]
    assert lrs[0] == pytest.approx(1e-30) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-30


def test_divergence_stops_when_held_out_loss_stalls_while_training_loss_falls_and_keeps_the_best():
    model = torch.nn.Linear(2, 1)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    divergence = Divergence(patience=2)
    assert not divergence.check(1.0, 1.0, [model])  # the best held-out check: its weights are kept
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not divergence.check(1.1, 0.9, [model])
    assert divergence.check(1.2, 0.8, [model])  # 2 checks without a better held-out loss, training better
    divergence.restore([model])
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    stalled = Divergence(patience=1)
    assert not stalled.check(1.0, 1.0, [model]) and not stalled.check(1.1, 1.2, [model])  # both worse: no


def test_training_stops_on_divergence_with_the_held_out_loss_in_its_metrics(
    small_cache: Path, tmp_path: Path
):
    """A learning rate that learns nothing: the held-out loss (fixed noise) never improves on its first
    check, and the noisy training loss soon dips below its first window's: the run stops early."""
    options = {"stop_on_divergence": True, "divergence_patience": 1, "holdout_share": 0.2, "lr": 1e-30}
    config = write_config(tmp_path / "d.toml", small_cache, warmup_steps=0, log_every_s=0.05, **options)
    result = run_train(config, tmp_path / "run", budget="2s")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped_at_step"] is not None and 0 < metrics["stopped_at_step"] < metrics["steps"] + 1
    assert metrics["held_out_loss"] > 0 and metrics["cpu_seconds"] < 2.0


def test_the_lr_range_test_stops_when_the_loss_explodes_and_picks_a_tenth_of_the_lowest():
    """A loss with its valley at lr 1e-3 that explodes past 3e-3: the test ends there, and picks a tenth of
    where the smoothed loss was lowest (the smoothing lags the valley by a few steps)."""
    test = LRRangeTest(steps=60)
    while test.running:
        lr = test.lr
        test.record(lr, 100.0 if lr > 3e-3 else 1.0 + (math.log10(lr) + 3) ** 2)
    assert test.lrs[0] == pytest.approx(LR_RANGE[0]) and len(test.lrs) < 60  # stopped before 1e-2
    assert all(b > a for a, b in zip(test.lrs, test.lrs[1:], strict=False))  # exponentially growing
    assert 1e-4 <= test.found <= 3e-4
    broken = LRRangeTest(steps=60)
    for loss in (5.0, 4.0, 3.0, math.nan):
        ended = broken.record(broken.lr, loss)
    assert ended and len(broken.lrs) == 3 and broken.found == pytest.approx(broken.lrs[2] / 10)


def test_high_error_sampling_draws_its_share_by_loss_and_gives_unseen_canvases_a_first_look():
    sampler = HighErrorSampler(10, share=0.5, generator=torch.Generator().manual_seed(0))
    sampler.record(torch.arange(9), torch.tensor([0.001] * 8 + [1.0]))  # 9 not seen: as high as 8
    draws = torch.cat([sampler.draw(torch.arange(10), 8) for _ in range(200)]).view(200, 8)
    by_loss, uniform = draws[:, :4], draws[:, 4:]
    assert (by_loss >= 8).float().mean() > 0.95  # 2 / (2 + 8 x 0.001) of the draws by loss
    assert (by_loss == 8).float().mean() > 0.35 and (by_loss == 9).float().mean() > 0.35
    assert 0.1 < (uniform >= 8).float().mean() < 0.3  # 2 in 10 of the uniform ones
    sampler.record(torch.tensor([9, 8, 3]), torch.tensor([0.001, 0.001, 1.0]))
    assert (sampler.draw(torch.arange(10), 1000)[:500] == 3).float().mean() > 0.95
    assert set(sampler.draw(torch.tensor([0, 1]), 100).tolist()) <= {0, 1}  # only the candidates


def test_training_with_the_lr_range_test_high_error_sampling_and_muon(small_cache: Path, tmp_path: Path):
    """The range test's lrs grow from LR_RANGE[0]; then the run trains from the initial weights at the lr
    it found, recorded in metrics.json, never above it. With Muon, whose moments the test's end resets."""
    options = {"lr_range_test": True, "lr_range_steps": 10, "sampling": "high_error", "warmup_steps": 0}
    options |= {"optimizer": "muon", "muon_lr_scale": 2.0}
    config = write_config(tmp_path / "r.toml", small_cache, log_every_s=0.01, **options)
    result = run_train(config, tmp_path / "run", budget="2s")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    found = metrics["lr_found"]
    assert LR_RANGE[0] / 10 <= found <= LR_RANGE[1] / 10 and metrics["steps"] > 10
    with open(tmp_path / "run" / "train_log.csv", newline="") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f) if row["lr"]]
    tested = [lr for lr in lrs if lr > found * 1.0001]  # during the test: above the lr it then chose
    assert LR_RANGE[0] <= lrs[0] <= LR_RANGE[1] and tested and max(lrs[len(lrs) // 2 :]) <= found * 1.0001


def test_durations():
    assert parse_duration("90s") == 90 and parse_duration("5m") == 300 and parse_duration("8h30m") == 30600
    assert parse_duration("1.5h") == 5400 and parse_duration("12") == 12
    with pytest.raises(ValueError, match="duration"):
        parse_duration("5 minutes")
