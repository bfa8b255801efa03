"""The shared transformer pieces: rotary positions turn channel pairs; scores see offsets only."""

from __future__ import annotations

import math

import pytest
import torch

from models.blocks import apply_rope, rope_2d


def test_rotary_positions_turn_each_channel_pair_by_its_angle():
    torch.manual_seed(0)
    head_dim, rows, cols = 8, torch.tensor([0, 1, 3]), torch.tensor([2, 0, 5])
    cos, sin = rope_2d(rows, cols, head_dim)
    x = torch.randn(2, 1, 3, head_dim)
    turned = apply_rope(x, (cos, sin))
    for token in range(3):
        for pair in range(head_dim // 2):
            angle = math.atan2(sin[token, pair].item(), cos[token, pair].item())
            a, b = x[0, 0, token, 2 * pair].item(), x[0, 0, token, 2 * pair + 1].item()
            expected = (a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle))
            got = turned[0, 0, token, 2 * pair : 2 * pair + 2].tolist()
            assert got == pytest.approx(expected, abs=1e-5)
    assert turned.dtype == x.dtype and turned.shape == x.shape


def test_rotary_attention_scores_depend_on_the_offset_between_cells_only():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(q_cell: tuple[int, int], k_cell: tuple[int, int]) -> float:
        cells = torch.tensor([q_cell, k_cell])
        rope = rope_2d(cells[:, 0], cells[:, 1], 16)
        turned_q = apply_rope(q, (rope[0][:1], rope[1][:1]))
        turned_k = apply_rope(k, (rope[0][1:], rope[1][1:]))
        return (turned_q * turned_k).sum().item()

    same_offset = [score((2, 3), (1, 1)), score((7, 9), (6, 7)), score((1, 2), (0, 0))]
    assert max(same_offset) - min(same_offset) < 1e-4
    assert abs(score((2, 3), (1, 1)) - score((2, 3), (1, 2))) > 1e-3  # another offset scores otherwise
