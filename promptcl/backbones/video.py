"""Frame encoders: any image backbone as a video backbone (``backbone.frame_encoder``).

A clip (B, T, C, H, W) becomes V images per sample ("views"), which go through the image
backbone's one prompted forward as a batch of B * V images; each sample's prompts are repeated
over its views, and the views' final tokens are pooled into (B, N, D), so every image prompt
method runs on video unchanged.

- ``frame-mean`` / ``frame-max``: the views are the T frames; tokens are averaged / maxed over
  them, per token and channel. For a ViT (class-token pool) and for CLIP's mean (its projection
  is linear) this equals pooling the frames' features; CLIP's max is taken before the projection.
- ``frame-grid`` (CoSTEP's frame grid; Zou et al., CVPR 2025, as described in the seed document):
  N_sp "spatial" frames at full resolution, plus one image in which N_tp = g x g "temporal"
  frames are shrunk and tiled row-major in time order, so the frozen self-attention relates
  patches of different frames with no new parameter. Tiles are patch-aligned: each is
  (image_size // g // patch) * patch pixels wide, so a tile covers whole patches and inherits a
  block of the position embedding; any leftover border (e.g. g = 3 at 224 / 16) is filled with
  the backbone's mean colour (zero after normalisation). The V = N_sp + 1 views are averaged.
  Frames are picked from the T given at TSN segment centres. [inferred] N_sp, g and mean
  pooling over the views: the seed gives none of them (specs/video-methods.md §1.4).

A ``hook`` prompt sees the B * V views as its batch. Everything else (the text tower of a CLIP,
``model``, ``tokenize``) is the image backbone's.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.errors import ConfigError

FrameEncoding = Literal["frame-mean", "frame-max", "frame-grid"]
_GRID_TOO_FINE = (
    "a {g} x {g} frame grid leaves less than one {p}-pixel patch per frame of a {s}-pixel image: "
    "lower backbone.grid_size"
)


def segment_centres(total: int, count: int) -> list[int]:
    """The centre frame of each of ``count`` equal segments of [0, total) (TSN test sampling)."""
    return [min(total - 1, (2 * k + 1) * total // (2 * count)) for k in range(count)]


def frame_grid(frames: Tensor, grid: int, patch: int, fill: Tensor) -> Tensor:
    """(B, g*g, C, S, S) frames -> (B, C, S, S) images with the frames tiled row-major.

    Each tile is (S // g // patch) * patch pixels wide and starts on a patch boundary; the rest of
    the image is ``fill`` (C,) (the backbone's mean colour).
    """
    B, n, C, S, _ = frames.shape
    tile = S // grid // patch * patch
    if n != grid * grid:
        raise ValueError(f"a {grid} x {grid} grid tiles {grid * grid} frames, got {n}")
    if tile == 0:
        raise ConfigError(_GRID_TOO_FINE.format(g=grid, s=S, p=patch))
    small = F.interpolate(
        frames.flatten(0, 1), size=(tile, tile), mode="bilinear", antialias=True
    ).view(B, grid, grid, C, tile, tile)
    tiled = small.permute(0, 3, 1, 4, 2, 5).reshape(B, C, grid * tile, grid * tile)
    image = fill.to(frames.dtype).view(1, C, 1, 1).expand(B, C, S, S).clone()
    image[..., : grid * tile, : grid * tile] = tiled
    return image


def repeat_prompts(prompts: LayerPrompts, batch: int, views: int) -> LayerPrompts:
    """Each sample's prompts repeated for its ``views`` consecutive images (B -> B * V rows).

    Tensors whose first axis is the batch are repeated; unbatched token prompts (L, D) and
    shared (1, L, D) ones broadcast by themselves.
    """

    def rep(t: Tensor) -> Tensor:
        return t.repeat_interleave(views, dim=0) if t.dim() >= 2 and t.shape[0] == batch else t

    def rep_tokens(t: Tensor) -> Tensor:
        return rep(t) if t.dim() == 3 else t

    return LayerPrompts(
        tokens={i: rep_tokens(t) for i, t in prompts.tokens.items()},
        prefix={i: (rep(k), rep(v)) for i, (k, v) in prompts.prefix.items()},
        residual={i: rep(t) for i, t in prompts.residual.items()},
        value={i: rep(t) for i, t in prompts.value.items()},
        hook=prompts.hook,
    )


class FrameEncoder(Backbone):
    """An image backbone run on clips: (B, T, C, H, W) in [0, 1] -> (B, N, D) pooled tokens."""

    modality = "video"

    def __init__(
        self,
        image: Backbone,
        encoding: FrameEncoding,
        spatial_frames: int = 2,
        grid_size: int = 2,
    ):
        super().__init__()
        if image.modality != "image":
            raise ConfigError(
                f"backbone.frame_encoder runs an image backbone on clips; this backbone already "
                f"takes {image.modality}s: drop backbone.frame_encoder"
            )
        self.image = image
        self.encoding, self.spatial_frames, self.grid_size = encoding, spatial_frames, grid_size
        for name in ("embed_dim", "depth", "num_heads", "feature_dim", "image_size", "patch_size"):
            setattr(self, name, getattr(image, name))
        self.mean, self.std = image.mean, image.std
        self.prompt_kinds = image.prompt_kinds
        self.supports_text = image.supports_text
        if encoding == "frame-grid" and image.image_size // grid_size // image.patch_size == 0:
            raise ConfigError(
                _GRID_TOO_FINE.format(g=grid_size, s=image.image_size, p=self.patch_size)
            )

    # The image backbone's freezing is the frame encoder's (fine-tuning unfreezes both).
    @property
    def frozen(self) -> bool:  # type: ignore[override]
        return self.image.frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self.image.frozen = value

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "image" or "image" not in self._modules:
                raise
            return getattr(self._modules["image"], name)

    def views(self, clip: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, V, C, H, W): the images the image backbone sees per clip."""
        if self.encoding != "frame-grid":
            return clip
        T, g = clip.shape[1], self.grid_size
        spatial = clip[:, segment_centres(T, self.spatial_frames)] if self.spatial_frames else None
        fill = torch.as_tensor(self.mean, device=clip.device)
        grid = frame_grid(clip[:, segment_centres(T, g * g)], g, self.patch_size, fill)
        grid = grid.unsqueeze(1)  # (B, 1, C, H, W)
        return grid if spatial is None else torch.cat([spatial, grid], dim=1)

    def forward(self, x: Tensor, prompts: LayerPrompts | None = None) -> Tensor:
        """(B, T, C, H, W) clips in [0, 1] -> (B, N, D) tokens pooled over the views."""
        if x.dim() != 5:
            raise ValueError(f"a frame encoder takes clips (B, T, C, H, W), got {tuple(x.shape)}")
        views = self.views(x)  # (B, V, C, H, W)
        B, V = views.shape[:2]
        if prompts is not None:
            prompts = repeat_prompts(prompts, B, V)
        tokens = self.image(views.flatten(0, 1), prompts)  # (B * V, N, D)
        tokens = tokens.view(B, V, *tokens.shape[1:])
        return tokens.amax(dim=1) if self.encoding == "frame-max" else tokens.mean(dim=1)

    def pool(self, tokens: Tensor) -> Tensor:
        return self.image.pool(tokens)
