"""Transformer pieces both world models share: patches, positions, attention, the plain pre-norm block.

Kept small and plain (nanoGPT style) so a researcher or an agent can read and change them at night. What
only one model uses lives in that model's file (the DiT's adaLN-Zero block and noise-level embedding are in
models/dit.py): a change there stays there. A change here changes both models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]
"""Keys and values of one attention layer, each (B, heads, L, head_dim)."""

Rope = tuple[Tensor, Tensor]
"""Rotary tables (cos, sin) for the tokens of one call, each (L, head_dim / 2)."""


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p), patches in raster order (row by row)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(patches: Tensor, patch: int, rows: int, cols: int, channels: int = 3) -> Tensor:
    """(B, rows*cols, C*p*p) -> (B, C, rows*p, cols*p); the inverse of `patchify`."""
    b = patches.shape[0]
    x = patches.reshape(b, rows, cols, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, rows * patch, cols * patch)


def sincos_2d(rows: int, cols: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, (rows*cols, dim), raster order.

    Fixed rather than learned: with a few thousand steps of training there is no time to learn positions,
    and the same table serves any canvas size.
    """
    if dim % 4:
        raise ValueError(f"sincos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    y, x = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )
    out_y = y.reshape(-1, 1) * omega
    out_x = x.reshape(-1, 1) * omega
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1).float()


def rope_2d(rows: Tensor, cols: Tensor, head_dim: int, base: float = 100.0) -> Rope:
    """2-D rotary position tables: half of each head's pairs turn with the row, half with the column.

    With rotary positions, attention scores depend on the *offset* between two tokens, so "look one patch
    to the left in the previous step" is the same pattern everywhere on the canvas: a world model learns
    motion as a shift far sooner than with absolute positions.
    """
    if head_dim % 4:
        raise ValueError(f"2-D rotary positions need a head width divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = 1.0 / base ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    angles = torch.cat([rows.double()[:, None] * freqs, cols.double()[:, None] * freqs], dim=1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate (B, heads, L, head_dim) queries or keys by their positions' angles.

    Each pair of channels (2i, 2i+1) is one complex number turned by its angle: one complex multiply in
    float32. On a CPU that is ~9x faster than multiplying the strided even and odd halves (0.3 ms against
    2.8 ms for the queries of 27 candidates under bf16 autocast), with the same result."""
    cos, sin = rope
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * torch.complex(cos.float(), sin.float())).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Multi-head self-attention with SDPA; can attend to a prefix of cached keys and values.

    `qk_norm`: RMS-normalize each head's queries and keys (learned scale) before rotary positions and the
    dot product, which bounds the attention logits; a model turns it on for its own blocks only.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0, qk_norm: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout
        self.q_norm = nn.RMSNorm(width // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(width // heads, eps=1e-6) if qk_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        prefix: KV | None = None,
        causal: bool = False,
        rope: Rope | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, KV]:
        """Returns the output and this call's own (k, v) (keys already rotated), so a caller can cache them.

        With a prefix, queries see every prefix position plus (causally, if asked) their own sequence.
        `mask` (queries, prefix + queries), True where a query may look, replaces both rules.
        """
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        own = (k, v)
        if prefix is not None:
            k = torch.cat([prefix[0].expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([prefix[1].expand(b, -1, -1, -1), v], dim=2)
            if causal and n > 1 and mask is None:
                p = prefix[0].shape[2]
                mask = torch.ones(n, p + n, dtype=torch.bool, device=x.device).tril(diagonal=p)
                causal = False
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal and n > 1 and mask is None
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), own


class MLP(nn.Module):
    """Two linears around an exact GELU (not the tanh approximation: on a CPU that one is ~5x slower)."""

    def __init__(self, width: int, ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(width * ratio)
        self.fc = nn.Linear(width, hidden)
        self.out = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.out(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(
        self,
        x: Tensor,
        prefix: KV | None = None,
        causal: bool = False,
        rope: Rope | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, KV]:
        """x: (B, L, d). Returns the output and this layer's (k, v), for a caller's cache."""
        h, kv = self.attn(self.norm1(x), prefix, causal, rope, mask)
        x = x + h
        return x + self.mlp(self.norm2(x)), kv


class FinalLayer(nn.Module):
    """Norm and a linear map from tokens back to pixel patches."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.norm(x))


def initialize(model: nn.Module) -> None:
    """Xavier-uniform linears with zero bias (the DiT / ViT default). Each model then zeroes, in its own
    `__init__` where a reader sees it, the layers that must start at zero (output heads, adaLN-Zero)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
