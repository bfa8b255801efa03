"""The offline TPE agent: edits that keep the file's layout, determinism, learning from the ledger, errors."""

from __future__ import annotations

import difflib
import math
import shutil
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from harness.agents.base import AgentContext, AgentError, AgentExhausted, InFlight
from harness.agents.local import LocalAgent
from harness.agents.toml_edit import format_toml_value, set_toml_values
from harness.ledger import RunRecord, RunStatus
from models.config import ExperimentConfig, load_config
from tests.helpers import agent_context

ROOT = Path(__file__).resolve().parents[1]
DIT = "experiments/dit.toml"
LR_ONLY = """
[agent]
seed = 0
n_startup_trials = {startup}
[dit]
"train.lr" = {{ low = 2e-4, high = 4e-3, log = true }}
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A worktree stand-in: the project's real experiment files and search space."""
    ws = tmp_path / "ws"
    (ws / "experiments").mkdir(parents=True)
    for name in ("dit.toml", "gpt.toml", "space.toml"):
        shutil.copy(ROOT / "experiments" / name, ws / "experiments" / name)
    return ws


def write_space(ws: Path, text: str) -> Path:
    path = ws / "experiments" / "space.toml"
    path.write_text(text)
    return path


def context(
    ws: Path, history: list[RunRecord], index: int | None = None, kinds: tuple[str, ...] = ("dit",)
) -> AgentContext:
    return agent_context(ws, history, index, run_dir=ws / "runs", experiment=DIT, model_kinds=kinds)


def baseline(mse: float | None = 0.02, status: RunStatus = RunStatus.KEEP) -> RunRecord:
    return RunRecord(
        run_id="r000",
        index=0,
        tag="t",
        hypothesis="baseline",
        status=status,
        metrics_val={} if mse is None else {"mse": mse},
        model_kind="dit",
        experiment=DIT,
    )


def run(index: int, params: dict[str, Any], mse: float | None, status: RunStatus | None = None) -> RunRecord:
    """A finished run of the local agent: judged with `mse`, or crashed when `mse` is None."""
    return RunRecord(
        run_id=f"r{index:03d}",
        index=index,
        tag="t",
        hypothesis="h",
        status=status or (RunStatus.DISCARD if mse is not None else RunStatus.CRASH),
        metrics_val={} if mse is None else {"mse": mse},
        agent_meta={"params": params, "kind": "dit", "trial": index},
    )


def flat(config: ExperimentConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, values in config.model_dump(mode="json").items():
        out.update({f"{section}.{k}": v for k, v in values.items()})
    return out


def lr_of(ws: Path, history: list[RunRecord], index: int) -> float:
    return LocalAgent().propose(context(ws, history, index)).meta["params"]["train.lr"]


# ------------------------------------------------------------------------------------------- the edit


@pytest.mark.parametrize("index", [1, 2, 3])
def test_proposal_rewrites_only_the_sampled_lines_of_the_experiment(workspace: Path, index: int):
    before = (workspace / DIT).read_text()
    proposal = LocalAgent().propose(context(workspace, [baseline()], index))

    assert [e.path for e in proposal.edits] == [DIT] == [proposal.experiment]
    after = proposal.edits[0].content
    assert after is not None
    params, base = proposal.meta["params"], proposal.meta["base"]
    changed = {k for k, v in params.items() if v != base[k]}
    assert changed and proposal.meta["kind"] == "dit" and proposal.meta["trial"] == index

    new, old = flat(ExperimentConfig.model_validate(tomllib.loads(after))), flat(load_config(workspace / DIT))
    assert {k for k in old if old[k] != new[k]} == changed
    assert all(new[k] == params[k] for k in params)
    # Comments and layout stay; the only lines that differ assign a changed key.
    assert [line for line in before.splitlines() if line.startswith("#")] == [
        line for line in after.splitlines() if line.startswith("#")
    ]
    diff = [d for d in difflib.ndiff(before.splitlines(), after.splitlines()) if d[:1] in "+-"]
    assert {d[2:].split("=")[0].strip() for d in diff} <= {k.split(".")[-1] for k in changed}
    for key in params:
        move = f"{key} {format_toml_value(base[key])} -> {format_toml_value(params[key])}"
        assert (move in proposal.hypothesis) == (key in changed)
    assert f"trial {index} of the night, from 1 judged run)" in proposal.hypothesis


def test_a_key_missing_from_the_file_is_added_to_its_section(workspace: Path):
    write_space(workspace, '[dit]\n"train.weight_decay" = { choices = [0.0, 0.1] }\n')
    proposal = LocalAgent().propose(context(workspace, [baseline()]))

    assert proposal.hypothesis == (
        "Tune train.weight_decay 0.0 -> 0.1 (random startup sample, trial 1 of the night, from 1 judged run)"
    )
    text = proposal.edits[0].content or ""
    assert text.endswith("seed = 0\nweight_decay = 0.1\n")  # the end of [train]
    assert load_config_text(text).train.weight_decay == 0.1


def load_config_text(text: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate(tomllib.loads(text))


def test_set_toml_values_keeps_comments_spacing_and_quoting():
    text = (
        "# top\n"
        "[ model ]  # the net\n"
        "width   = 128   # tokens\n"
        'name = "a#b" # keep\n'
        "\n"
        "# next table\n"
        '["train"]\n'
        '"lr" = 1e-3\n'
        "seed = 0\n"
        "\n"
        "# trailing comment\n"
    )
    out = set_toml_values(
        text,
        {
            "model.width": 160,
            "model.name": 'say "hi"',
            "train.lr": 2.1e-05,
            "train.ema": 0.99,
            "data.x": True,
        },
    )
    assert out.startswith(
        '# top\n[ model ]  # the net\nwidth   = 160   # tokens\nname = "say \\"hi\\"" # keep\n'
    )
    assert '"lr" = 2.1e-05\nseed = 0\nema = 0.99\n\n# trailing comment\n\n[data]\nx = true\n' in out
    parsed = tomllib.loads(out)
    assert parsed["model"] == {"width": 160, "name": 'say "hi"'}
    assert parsed["train"] == {"lr": 2.1e-05, "seed": 0, "ema": 0.99} and parsed["data"] == {"x": True}


def test_set_toml_values_refuses_a_multiline_value():
    with pytest.raises(ValueError, match=r"line 2: canvas.cameras is not a one-line scalar"):
        set_toml_values('[canvas]\ncameras = [\n  "wrist",\n]\n', {"canvas.cameras": "base"})


@pytest.mark.parametrize(
    "value", [0.0021, 2.1e-05, 1e-3, 4e-3, 0.1 + 0.2, 3.0, 1e22, -0.5, 0, 7, True, False, "x0", 'q"\\\n\té']
)
def test_values_round_trip_through_toml(value: Any):
    written = format_toml_value(value)
    back = tomllib.loads(f"v = {written}")["v"]
    assert back == value and type(back) is type(value)
    if isinstance(value, float):
        assert len(written) <= len(repr(value))  # short: 0.0021, not 0.0020999999


# -------------------------------------------------------------------------------- determinism, history


def test_same_history_same_proposal_and_another_index_another(workspace: Path):
    history = [baseline()]
    for index in range(1, 5):  # a night of the agent's own proposals
        proposal = LocalAgent().propose(context(workspace, history, index))
        history.append(run(index, proposal.meta["params"], 0.02 + 0.001 * index))
    first = LocalAgent().propose(context(workspace, history, 5))
    again = LocalAgent().propose(context(workspace, history, 5))
    other = LocalAgent().propose(context(workspace, history, 6))
    assert first.model_dump() == again.model_dump()
    assert first.meta["params"] != other.meta["params"]


def test_a_config_in_flight_counts_as_tried(workspace: Path):
    """A parallel night asks while runs train: the same index with that run in flight proposes another."""
    history = [baseline()]
    proposal = LocalAgent().propose(context(workspace, history, 1))
    busy = InFlight("r001", proposal.hypothesis, proposal.meta)
    other = LocalAgent().propose(replace(context(workspace, history, 1), in_flight=[busy]))
    assert other.meta["params"] != proposal.meta["params"]


def test_tpe_follows_the_history_to_the_good_learning_rates(workspace: Path):
    """Small learning rates got a low mse, large ones a high mse: after the startup trials, TPE samples
    the good half of the (log) range far more often than random search's one in two."""
    write_space(workspace, LR_ONLY.format(startup=5))
    lrs = [2e-4 * 20 ** ((i + 0.5) / 12) for i in range(12)]  # log-spaced over the whole range
    history = [baseline(mse=0.01 * (1 + math.log(1e-3 / 2e-4)))]
    history += [
        run(i + 1, {"train.lr": round(lr, 7)}, 0.01 * (1 + math.log(lr / 2e-4))) for i, lr in enumerate(lrs)
    ]
    middle = math.sqrt(2e-4 * 4e-3)
    proposals = [lr_of(workspace, history, index) for index in range(13, 33)]
    assert sum(lr < middle for lr in proposals) >= 16, proposals
    meta = LocalAgent().propose(context(workspace, history)).meta
    assert meta["sampler"] == "tpe"


def test_crashed_runs_are_failed_trials_that_tpe_avoids(workspace: Path):
    write_space(workspace, LR_ONLY.format(startup=3))
    judged = [
        run(i, {"train.lr": lr}, 0.02 + lr) for i, lr in enumerate([2.2e-4, 3e-4, 4.5e-4, 6e-4], start=1)
    ]
    crashed = [run(i, {"train.lr": lr}, None) for i, lr in enumerate([1.6e-3, 2.2e-3, 3e-3, 3.8e-3], start=5)]
    crashed[-1] = crashed[-1].model_copy(update={"status": RunStatus.TIMEOUT})
    history = [baseline(), *judged, *crashed]

    states = [t.state for t in LocalAgent().study(context(workspace, history)).trials]
    assert states == [TrialState.COMPLETE] * 5 + [TrialState.PRUNED] * 4

    def high(runs: list[RunRecord]) -> int:
        return sum(lr_of(workspace, runs, index) > 1.5e-3 for index in range(9, 29))

    assert high(history) <= 2 < high(history[:5])  # without the crashes it would go there
    only_crashes = [baseline(), *crashed[:2]]  # crashes count toward the startup trials too
    write_space(workspace, LR_ONLY.format(startup=3))
    assert LocalAgent().propose(context(workspace, only_crashes)).meta["sampler"] == "tpe"


def test_the_baseline_is_a_trial_at_its_own_values_even_after_a_keep(workspace: Path):
    write_space(workspace, LR_ONLY.format(startup=3))
    assert [t.params for t in LocalAgent().study(context(workspace, [baseline()])).trials] == [
        {"dit:train.lr": 0.001}
    ]
    first = LocalAgent().propose(context(workspace, [baseline()]))
    kept = run(1, first.meta["params"], 0.01, RunStatus.KEEP).model_copy(update={"agent_meta": first.meta})
    (workspace / DIT).write_text(first.edits[0].content or "")  # the branch moved to run 1
    trials = LocalAgent().study(context(workspace, [baseline(), kept])).trials
    assert [t.params["dit:train.lr"] for t in trials] == [0.001, first.meta["params"]["train.lr"]]
    assert [t.value for t in trials] == [0.02, 0.01]


def test_a_crashed_baseline_and_another_agents_runs(workspace: Path):
    foreign = RunRecord(run_id="r001", index=1, tag="t", hypothesis="h", status=RunStatus.DISCARD)
    trials = LocalAgent().study(context(workspace, [baseline(None, RunStatus.CRASH), foreign])).trials
    assert [t.state for t in trials] == [TrialState.PRUNED]  # the other agent's edit is not in the space


# ---------------------------------------------------------------------------------- kinds, constraints


def test_both_kinds_are_chosen_from_their_own_files(workspace: Path):
    proposals = [
        LocalAgent().propose(context(workspace, [baseline()], i, ("dit", "gpt"))) for i in range(1, 9)
    ]
    assert {p.experiment for p in proposals} == {"experiments/dit.toml", "experiments/gpt.toml"}
    for p in proposals:
        assert [e.path for e in p.edits] == [p.experiment] == [f"experiments/{p.meta['kind']}.toml"]
        config = load_config_text(p.edits[0].content or "")
        assert config.model.kind == p.meta["kind"]
        assert p.hypothesis.startswith(f"Train {p.meta['kind']} ({p.experiment}): tune ")
        assert ("model.prediction" in p.meta["params"]) == (p.meta["kind"] == "dit")


def test_samples_the_model_would_refuse_are_resampled(workspace: Path):
    write_space(
        workspace,
        '[dit]\n"model.heads" = { choices = [3, 4, 5, 8] }\n"model.patch" = { choices = [8, 16] }\n'
        '"train.lr" = { low = 2e-4, high = 4e-3, log = true }\n',
    )
    for index in range(1, 9):
        proposal = LocalAgent().propose(context(workspace, [baseline()], index))
        config = load_config_text(proposal.edits[0].content or "")
        assert config.model.heads in (4, 8) and config.model.patch == 8  # it loaded: every rule holds


def test_no_valid_sample_is_a_clear_error(workspace: Path):
    space = write_space(
        workspace, '[agent]\nmax_resamples = 10\n[dit]\n"model.heads" = { choices = [3, 5] }\n'
    )
    with pytest.raises(AgentError) as caught:
        LocalAgent().propose(context(workspace, [baseline()]))
    assert str(caught.value).startswith(
        f"{space}: no valid config in 10 samples (last: bad config: model.dit"
    )
    assert "do not divide width 128)" in str(caught.value)


def test_a_space_with_nothing_new_left_is_exhausted(workspace: Path):
    write_space(
        workspace, '[agent]\nmax_resamples = 10\n[dit]\n"train.weight_decay" = { choices = [0.0, 0.1] }\n'
    )
    history = [baseline(), run(1, {"train.weight_decay": 0.1}, 0.03)]  # 0.0 is the current config
    with pytest.raises(AgentExhausted, match="nothing new"):
        LocalAgent().propose(context(workspace, history))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[dit\n", "not valid TOML"),
        (
            '[dit]\n"train.lr" = { low = 1e-2, high = 1e-3, log = true }\n',
            '[dit] "train.lr": low (0.01) must be below',
        ),
        ('[dit]\n"train.lrr" = { choices = [1e-3] }\n', '"train.lrr": the dit config has no field train.lrr'),
        (
            '[dit]\n"canvas.frame_width" = { choices = [32, 64] }\n',
            '"canvas.frame_width": canvas.* defines the task',
        ),
        ('[dit]\n"train.lr" = 0.001\n', '"train.lr": an entry is'),
        ('[dit]\n"model.depth" = { low = 2, high = 6.5 }\n', '"model.depth": model.depth is an integer'),
        ('[dit]\n"model.prediction" = { low = 0, high = 1 }\n', "is not a number: search it with choices"),
        ('[dit]\n"model.patch" = { choices = [8, 100] }\n', '[dit] "model.patch": 100 is not a valid value'),
        ('[dit]\n"train.lr" = { low = 1e-4, high = 1e-3, spread = 2 }\n', '"train.lr": bad entry: spread'),
        (
            '[agent]\nseeds = 1\n[dit]\n"train.lr" = { low = 1e-4, high = 1e-3 }\n',
            "[agent]: bad settings: seeds",
        ),
        ('[gpt]\n"train.lr" = { low = 1e-4, high = 1e-3 }\n', "no [dit] table, but this night trains a dit"),
        ("[dti]\n", "unknown table [dti]"),
    ],
)
def test_a_malformed_space_names_the_file_and_the_entry(workspace: Path, text: str, fragment: str):
    space = write_space(workspace, text)
    with pytest.raises(AgentError) as caught:
        LocalAgent().propose(context(workspace, [baseline()]))
    message = str(caught.value)
    assert message.startswith(f"{space}: ") and fragment in message, message


def test_an_unquoted_dotted_key_means_the_same(workspace: Path):
    write_space(workspace, "[dit]\ntrain.lr = { low = 2e-4, high = 4e-3, log = true }\n")
    assert set(LocalAgent().propose(context(workspace, [baseline()])).meta["params"]) == {"train.lr"}


def test_one_idea_per_run_changes_at_most_max_changes_keys(workspace: Path):
    """The project's space changes at most 2 keys per run; `max_changes = 0` lets every key move."""
    assert "max_changes = 2" in (workspace / "experiments/space.toml").read_text()
    for index in range(1, 7):
        meta = LocalAgent().propose(context(workspace, [baseline()], index)).meta
        changed = [k for k, v in meta["params"].items() if v != meta["base"][k]]
        assert 1 <= len(changed) <= 2, changed
    text = (workspace / "experiments/space.toml").read_text().replace("max_changes = 2", "max_changes = 0")
    write_space(workspace, text)
    meta = LocalAgent().propose(context(workspace, [baseline()], 1)).meta
    assert sum(v != meta["base"][k] for k, v in meta["params"].items()) > 2
