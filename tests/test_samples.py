"""Which frames become canvas samples, the episode split, and the action vocabulary helpers."""

import numpy as np
import pytest

from models.data import SplitConfig, sample_frames, split_episodes, step_starts
from models.vocab import BUFFER, PAN_MINUS, PAN_PLUS, STAY, derive_from_commands, from_published_codes


def held(*actions: int, fpa: int = 15) -> np.ndarray:
    return np.repeat(np.array(actions, dtype=np.int64), fpa)


def test_steps_sit_on_action_boundaries():
    actions = held(STAY, PAN_PLUS, PAN_PLUS, PAN_MINUS)
    assert step_starts(actions, 15).tolist() == [0, 15, 30, 45]
    # target frame must exist: the last interval ends at frame 60, which is past the end
    assert sample_frames(actions, 15, history=1).tolist() == [[0, 15], [15, 30], [30, 45]]
    assert sample_frames(actions, 15, history=2).tolist() == [[0, 15, 30], [15, 30, 45]]


def test_buffer_frames_and_cut_short_actions_give_no_samples():
    actions = np.concatenate([np.full(7, BUFFER), held(STAY, PAN_PLUS), [PAN_MINUS] * 9, held(STAY, STAY)])
    # buffer 0..6; stay 7..21; pan+ 22..36; pan- 37..45 (too short); stay 46..75
    assert step_starts(actions, 15).tolist() == [7, 22, 46, 61]
    assert sample_frames(actions, 15, history=1).tolist() == [[7, 22], [22, 37], [46, 61]]
    # the chain breaks at the short action: no 2-step sample spans it
    assert sample_frames(actions, 15, history=2).tolist() == [[7, 22, 37]]


def test_split_is_seeded_disjoint_and_complete():
    a = split_episodes(200, SplitConfig(seed=0))
    b = split_episodes(200, SplitConfig(seed=0))
    c = split_episodes(200, SplitConfig(seed=1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], c["val"])
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (160, 20, 20)
    everything = np.concatenate(list(a.values()))
    assert sorted(everything.tolist()) == list(range(200))
    small = split_episodes(3)
    assert [len(small[k]) for k in ("train", "val", "test")] == [1, 1, 1]


def test_published_codes_map_to_our_ids():
    assert from_published_codes(np.array([0, 1, 2, 3])).tolist() == [BUFFER, PAN_PLUS, PAN_MINUS, STAY]
    with pytest.raises(ValueError, match="4"):
        from_published_codes(np.array([4]))


def test_actions_derived_from_commanded_pan():
    step = 7.0
    jumps = np.concatenate([np.zeros(15), np.full(30, step), np.zeros(15)])  # stay, pan+, stay, pan-
    assert (
        derive_from_commands(jumps, 15, deadband=1.0).tolist()
        == held(STAY, PAN_PLUS, STAY, PAN_MINUS).tolist()
    )
    ramp = np.concatenate([np.linspace(0, step, 15), np.full(15, step)])  # leader-arm style ramp
    assert derive_from_commands(ramp, 15, deadband=1.0).tolist() == held(PAN_PLUS, STAY).tolist()
