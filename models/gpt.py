"""Autoregressive patch transformer (GPT) over the canvas: continuous patch regression, no tokenizer.

One canvas is one causal sequence of patch tokens:

    [ context tokens (raster) | last separator's tokens | target inputs 0 .. T-1 ]

- context / separator token = Linear(patch) + sincos position of its cell + segment embedding;
- target input j = Linear(target patch j-1) (a learned start vector for j = 0) + position of target cell j
  + segment embedding + action embedding. The output at target input j regresses target patch j.

The action reaches the model twice: through the separator's color (as in the published canvas setting) and
as an embedding added to every target input, so a weak or far-away separator cannot hide it.

Training is teacher forcing with an MSE on the target patches. The output head is linear (not tanh):
saturated pixels (black, white, separator colors) stay reachable without huge pre-activations; `predict`
clamps to [-1, 1] and feeds the clamped patch back as the next input. Inference encodes each context once
(causal prefill), shares its keys and values with every candidate action, and generates the target one
patch at a time with a KV cache. `predict_uncached` recomputes the whole sequence every step; a test
checks that both agree.
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
    """Causal patch transformer: context, then separator, then the target patch by patch."""

    kind = "gpt"

    def __init__(self, config: GPTConfig, canvas: CanvasConfig) -> None:
        super().__init__(config, canvas)
        d, grid = config.width, self.grid
        self.patch_dim = 3 * config.patch * config.patch
        sequence = torch.cat([grid.context_index, grid.separator_index, grid.target_index])
        self.register_buffer("sequence_index", sequence, persistent=False)  # the cell of every position

        self.embed = nn.Linear(self.patch_dim, d)  # one patch embedding for every segment
        self.segment = nn.Embedding(3, d)
        self.action_embed = nn.Embedding(NUM_ACTIONS, d)
        self.start = nn.Parameter(torch.zeros(d))  # stands in for "target patch -1"
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

    def _target_tokens(self, content: Tensor, first: int, action: Tensor) -> Tensor:
        """Target inputs first .. first+n-1 from `content` (B, n, d), the embedded previous patches."""
        cells = self.target_index[first : first + content.shape[1]]
        position = self.positions(cells)[0]
        return content + position + self.segment.weight[TARGET] + self.action_embed(action)[:, None]

    def _rope(self, start: int, stop: int) -> Rope | None:
        """Rotary tables of sequence positions start..stop-1 (None with absolute positions)."""
        return self.positions(self.sequence_index[start:stop])[1]

    # --------------------------------------------------------------------------------------- training

    def forward(self, canvases: Tensor, action: Tensor) -> Tensor:
        """Teacher-forced target predictions (B, T, 3*p*p), one per target token, in raster order.

        `action` (B,) is the action into the target step. Output j sees only the context, the separator
        and target patches < j; it is the per-token view that the causality test and `loss` use.
        """
        return self._outputs(patchify(canvases, self.config.patch), action)

    def _outputs(self, patches: Tensor, action: Tensor) -> Tensor:
        b = patches.shape[0]
        targets = patches[:, self.target_index]
        content = torch.cat([self.start.expand(b, 1, -1), self.embed(targets[:, :-1])], dim=1)
        x = torch.cat(
            [
                self._tokens(patches[:, self.context_index], self.context_index, CONTEXT),
                self._tokens(patches[:, self.separator_index], self.separator_index, SEPARATOR),
                self._target_tokens(content, 0, action),
            ],
            dim=1,
        )
        rope = self._rope(0, x.shape[1])
        for block in self.blocks:
            x, _ = block(x, causal=True, rope=rope)
        return self.final(x[:, -targets.shape[1] :]) + self.residual_base(patches)

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

        The context is encoded once (causal prefill) and its keys/values are copied once into a cache that
        every candidate extends; the separator comes from the candidate's action, the target region of
        `context` is ignored. `seed` is unused: the model is deterministic.
        """
        del seed
        b, k = self.check_actions(context, actions)
        nc, ns, nt = len(self.context_index), len(self.separator_index), len(self.target_index)
        length, n = nc + ns + nt, b * k
        action = actions.reshape(n)
        with self.eval_mode():
            # 1. causal prefill of each context, once; its K/V go into every candidate's cache row.
            context_patches = patchify(context, self.config.patch)
            base = self.residual_base(context_patches).repeat_interleave(k, dim=0)
            x = self._tokens(context_patches[:, self.context_index], self.context_index, CONTEXT)
            caches = []
            rope = self._rope(0, nc)
            for block in self.blocks:
                x, (key, value) = block(x, causal=True, rope=rope)
                heads, head_dim = key.shape[1], key.shape[3]
                cache = key.new_empty(2, b, k, heads, length, head_dim)
                cache[:, :, :, :, :nc] = torch.stack([key, value])[:, :, None]
                caches.append(cache.view(2, n, heads, length, head_dim))

            # 2. separator tokens depend only on the action's color: embed the NUM_ACTIONS variants once.
            colors = self.separator_patches(torch.arange(NUM_ACTIONS, device=context.device))
            separators = self._tokens(colors, self.separator_index, SEPARATOR)

            # 3. separator + start token in one causal step, then one target patch per step.
            start = self._target_tokens(self.start.expand(n, 1, -1), 0, action)
            out = self._extend(torch.cat([separators[action], start], dim=1), caches, nc)
            patches = [(out + base[:, 0]).clamp(-1.0, 1.0)]
            for j in range(1, nt):
                x = self._target_tokens(self.embed(patches[-1])[:, None], j, action)
                out = self._extend(x, caches, nc + ns + j)
                patches.append((out + base[:, j]).clamp(-1.0, 1.0))
        return self._target_image(torch.stack(patches, dim=1), b, k)

    def _extend(self, x: Tensor, caches: list[Tensor], t: int) -> Tensor:
        """Run new tokens at positions t.. through the blocks against the cache[:t], store their K/V,
        and return the network output of the last one (a patch, or a change when residual)."""
        m = x.shape[1]
        rope = self._rope(t, t + m)
        for block, cache in zip(self.blocks, caches, strict=True):
            x, (key, value) = block(
                x, prefix=(cache[0, :, :, :t], cache[1, :, :, :t]), causal=True, rope=rope
            )
            cache[0, :, :, t : t + m] = key
            cache[1, :, :, t : t + m] = value
        return self.final(x[:, -1])

    @torch.no_grad()
    def predict_uncached(self, context: Tensor, actions: Tensor) -> Tensor:
        """`predict` the slow way: paint each candidate's canvas and rerun the full teacher-forced sequence
        for every target patch. Exists to prove the KV-cached path exact; not for real use."""
        b, k = self.check_actions(context, actions)
        action = actions.reshape(b * k)
        canvases = self.paint_action(context.repeat_interleave(k, dim=0), action)
        patches = patchify(canvases, self.config.patch)
        patches[:, self.target_index] = 0.0
        with self.eval_mode():
            for j, cell in enumerate(self.target_index.tolist()):
                patches[:, cell] = self._outputs(patches, action)[:, j].clamp(-1.0, 1.0)
        return self._target_image(patches[:, self.target_index], b, k)

    # ---------------------------------------------------------------------------------------- helpers

    def _target_image(self, patches: Tensor, b: int, k: int) -> Tensor:
        """(B*K, T, 3*p*p) target patches -> (B, K, 3, H, W_target)."""
        image = unpatchify(patches, self.config.patch, self.grid.rows, self.grid.target_cols)
        return image.view(b, k, *image.shape[1:])
