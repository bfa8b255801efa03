"""Autoregressive patch transformer (GPT) over the canvas: continuous patch regression, no tokenizer.

One canvas is one sequence of patch tokens:

    [ context tokens (raster) | last separator's tokens | target inputs, block 0 | block 1 | ... ]

The target is predicted in blocks of `rows_per_step` patch rows (by default one block: all of it at
once), each block from everything before it (block-causal attention): the context attends within itself,
the separator sees the context, and target block b sees the context, the separator and blocks <= b.

- context / separator token = Linear(patch) + position of its cell + segment embedding;
- target input at cell (r, c) = Linear(target patch (r - rows_per_step, c)), the patch one block up (a
  learned start vector in block 0) + Linear(the last context step's patch at (r, c)) + position of cell
  (r, c) + segment embedding + action embedding. The output there regresses target patch (r, c).

Each target token reads what was in its own cell a step ago (as the DiT's target tokens do): most of the
picture moves by a patch or not at all, so the token starts from the pixels it most likely becomes.

Why blocks of rows, and by default one block, rather than one patch at a time: the loss is an MSE, so each
output is a mean, and feeding a mean back in adds no information the context did not already hold; what
autoregression does add is error that compounds over the steps (exposure bias: teacher-forced inputs in
training, the model's own blurry outputs at inference). Measured on the simulated dataset at the same
7,300 training samples (benchmarks/RESULTS.md): a row at a time (17 steps) reached cf_acc 0.57 and mse
0.94x the copy baseline, one step 0.91 and 0.89x, and one step reading the last frame's cell 0.99 and 0.51x.

The action reaches the model twice: through the separator's color (as in the published canvas setting) and
as an embedding added to every target input, so a weak or far-away separator cannot hide it.

Training is teacher forcing with an MSE on the target patches. The output head is linear (not tanh):
saturated pixels (black, white, separator colors) stay reachable without huge pre-activations; `predict`
clamps to [-1, 1] and feeds the clamped block back as the next block's input. Inference encodes each
context once, shares its keys and values with every candidate action, and generates the target block by
block with a KV cache. `predict_uncached` recomputes the whole sequence every step; a test checks that both
agree.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.blocks import Block, FinalLayer, Rope, initialize, patchify, unpatchify
from models.canvas import CanvasConfig
from models.config import GPTConfig
from models.vocab import NUM_ACTIONS
from models.world_model import WorldModel

CONTEXT, SEPARATOR, TARGET = 0, 1, 2
"""Segment ids: which part of the canvas a token comes from."""


class GPT(WorldModel):
    """Block-causal patch transformer: context, then separator, then the target a block of rows at a time."""

    kind = "gpt"

    def __init__(self, config: GPTConfig, canvas: CanvasConfig) -> None:
        super().__init__(config, canvas)
        d, grid = config.width, self.grid
        self.patch_dim = 3 * config.patch * config.patch
        sequence = torch.cat([grid.context_index, grid.separator_index, grid.target_index])
        self.register_buffer("sequence_index", sequence, persistent=False)  # the cell of every position

        # Decoding blocks: target token j (raster order) lies in row j // target_cols; its input is the
        # patch `shift` tokens back, one block up.
        nc, ns, nt = len(grid.context_index), len(grid.separator_index), len(grid.target_index)
        self.shift = min(config.rows_per_step or grid.rows, grid.rows) * grid.target_cols
        self.steps = [(a, min(a + self.shift, nt)) for a in range(0, nt, self.shift)]
        group = torch.cat(
            [torch.zeros(nc), torch.ones(ns), 2 + torch.arange(nt) // self.shift]
        )  # context 0, separator 1, target block b: 2 + b
        self.register_buffer("attend", group[None, :] <= group[:, None], persistent=False)  # (L, L)

        self.embed = nn.Linear(self.patch_dim, d)  # one patch embedding for every segment
        self.embed_last = nn.Linear(self.patch_dim, d)  # a target token's cell in the last context step
        self.segment = nn.Embedding(3, d)
        self.action_embed = nn.Embedding(NUM_ACTIONS, d)
        self.start = nn.Parameter(torch.zeros(d))  # stands in for the patches above the target
        self.blocks = nn.ModuleList(
            Block(d, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)
        )
        self.final = FinalLayer(d, self.patch_dim)
        initialize(self)  # xavier linears, zero biases
        nn.init.zeros_(self.final.linear.weight)  # a zero output head: untrained, the model predicts its base
        for weight in (self.segment.weight, self.action_embed.weight, self.start):
            nn.init.normal_(weight, std=0.02)  # small next to the unit-scale sincos positions

    # ----------------------------------------------------------------------------------------- tokens

    def _tokens(self, cells: Tensor, index: Tensor, segment: int) -> Tensor:
        """Input tokens of the canvas cells `index` holding the patches `cells` (B, len(index), 3*p*p):
        patch embedding + position + segment."""
        return self.embed(cells) + self.positions(index)[0] + self.segment.weight[segment]

    def _target_tokens(self, above: Tensor | None, last: Tensor, first: int, action: Tensor) -> Tensor:
        """Target inputs first .. first+n-1 from `last` (B, n, 3*p*p), the last context step's patches in
        their cells, and the patches one block up (`above`, the same shape), or the start vector in block 0
        (`above` None)."""
        count = last.shape[1]
        cells = self.target_index[first : first + count]
        above = self.start.expand(len(action), count, -1) if above is None else self.embed(above)
        content = above + self.embed_last(last)
        return (
            content
            + self.positions(cells)[0]
            + self.segment.weight[TARGET]
            + self.action_embed(action)[:, None]
        )

    def _rope(self, start: int, stop: int) -> Rope | None:
        """Rotary tables of sequence positions start..stop-1 (None with absolute positions)."""
        return self.positions(self.sequence_index[start:stop])[1]

    # --------------------------------------------------------------------------------------- training

    def forward(self, canvases: Tensor, action: Tensor) -> Tensor:
        """Teacher-forced target predictions (B, T, 3*p*p), one per target token, in raster order.

        `action` (B,) is the action into the target step. The output of a token in block b sees only the
        context, the separator and the target patches of blocks < b; it is the per-token view that the
        causality test and `loss` use.
        """
        return self._outputs(patchify(canvases, self.config.patch), action)

    def _outputs(self, patches: Tensor, action: Tensor) -> Tensor:
        targets, last = patches[:, self.target_index], self.last_step(patches)
        nt, shift = targets.shape[1], self.shift
        inputs = [self._target_tokens(None, last[:, :shift], 0, action)]
        if shift < nt:
            inputs.append(self._target_tokens(targets[:, : nt - shift], last[:, shift:], shift, action))
        x = torch.cat(
            [
                self._tokens(patches[:, self.context_index], self.context_index, CONTEXT),
                self._tokens(patches[:, self.separator_index], self.separator_index, SEPARATOR),
                *inputs,
            ],
            dim=1,
        )
        rope = self._rope(0, x.shape[1])
        for block in self.blocks:
            x, _ = block(x, rope=rope, mask=self.attend)
        return self.final(x[:, -nt:]) + self.residual_base(patches)

    def loss(self, canvases: Tensor, actions: Tensor) -> Tensor:
        """Per-canvas MSE over the target patches (B,); `actions` (B, history), the last one leads into the
        target."""
        prediction = self(canvases, actions[:, -1])
        truth = patchify(canvases, self.config.patch)[:, self.target_index]
        return (prediction.float() - truth.float()).square().mean(dim=(1, 2))

    # -------------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def predict(self, context: Tensor, actions: Tensor, seed: int | None = None) -> Tensor:
        """Target step (B, K, 3, H, W_target) in [-1, 1] for B contexts under K candidate actions each.

        The context is encoded once and its keys/values are copied once into a cache that every candidate
        extends; the separator comes from the candidate's action, the target region of `context` is
        ignored. `seed` is unused: the model is deterministic.
        """
        del seed
        b, k = self.check_actions(context, actions)
        nc, ns, nt = len(self.context_index), len(self.separator_index), len(self.target_index)
        length, n = nc + ns + nt, b * k
        action = actions.reshape(n)
        with self.eval_mode():
            # 1. the context, once (it attends within itself); its K/V go into every candidate's cache row.
            context_patches = patchify(context, self.config.patch)
            base = self.residual_base(context_patches).repeat_interleave(k, dim=0)
            last = self.last_step(context_patches).repeat_interleave(k, dim=0)
            x = self._tokens(context_patches[:, self.context_index], self.context_index, CONTEXT)
            caches = []
            rope = self._rope(0, nc)
            for block in self.blocks:
                x, (key, value) = block(x, rope=rope)
                heads, head_dim = key.shape[1], key.shape[3]
                cache = key.new_empty(2, b, k, heads, length, head_dim)
                cache[:, :, :, :, :nc] = torch.stack([key, value])[:, :, None]
                caches.append(cache.view(2, n, heads, length, head_dim))

            # 2. separator tokens depend only on the action's color: embed the NUM_ACTIONS variants once.
            colors = self.separator_patches(torch.arange(NUM_ACTIONS, device=context.device))
            separators = self._tokens(colors, self.separator_index, SEPARATOR)

            # 3. separator + the first block in one step, then one block per step from the block above.
            target = base.new_empty(n, nt, self.patch_dim)
            for first, stop in self.steps:
                above = None if first == 0 else target[:, first - self.shift : stop - self.shift]
                x = self._target_tokens(above, last[:, first:stop], first, action)
                if first == 0:
                    x = torch.cat([separators[action], x], dim=1)
                out = self._extend(x, caches, nc if first == 0 else nc + ns + first)[:, first - stop :]
                target[:, first:stop] = (out + base[:, first:stop]).clamp(-1.0, 1.0)
        return self._target_image(target, b, k)

    def _extend(self, x: Tensor, caches: list[Tensor], t: int) -> Tensor:
        """Run new tokens at positions t.. through the blocks against the cache[:t], store their K/V, and
        return the network's outputs for them (patches, or changes when residual)."""
        m = x.shape[1]
        rope = self._rope(t, t + m)
        mask = self.attend[t : t + m, : t + m]
        for block, cache in zip(self.blocks, caches, strict=True):
            x, (key, value) = block(x, prefix=(cache[0, :, :, :t], cache[1, :, :, :t]), rope=rope, mask=mask)
            cache[0, :, :, t : t + m] = key
            cache[1, :, :, t : t + m] = value
        return self.final(x)

    @torch.no_grad()
    def predict_uncached(self, context: Tensor, actions: Tensor) -> Tensor:
        """`predict` the slow way: paint each candidate's canvas and rerun the full teacher-forced sequence
        for every block. Exists to prove the KV-cached path exact; not for real use."""
        b, k = self.check_actions(context, actions)
        action = actions.reshape(b * k)
        canvases = self.paint_action(context.repeat_interleave(k, dim=0), action)
        patches = patchify(canvases, self.config.patch)
        patches[:, self.target_index] = 0.0
        with self.eval_mode():
            for first, stop in self.steps:
                cells = self.target_index[first:stop]
                patches[:, cells] = self._outputs(patches, action)[:, first:stop].clamp(-1.0, 1.0)
        return self._target_image(patches[:, self.target_index], b, k)

    # ---------------------------------------------------------------------------------------- helpers

    def _target_image(self, patches: Tensor, b: int, k: int) -> Tensor:
        """(B*K, T, 3*p*p) target patches -> (B, K, 3, H, W_target)."""
        image = unpatchify(patches, self.config.patch, self.grid.rows, self.grid.target_cols)
        return image.view(b, k, *image.shape[1:])
