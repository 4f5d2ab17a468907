"""VideoMamba in plain PyTorch: a frozen bidirectional-Mamba video backbone with one prompted forward.

VideoMamba (Li, Li, Wang, He, Wang, Qiao; "VideoMamba: State Space Model for Efficient Video
Understanding", ECCV 2024), written from its official code (OpenGVLab/VideoMamba,
``videomamba/video_sm/models/videomamba.py`` and the Mamba fork ``mamba/mamba_ssm/modules/
mamba_simple.py``), with no code copied and without its CUDA extensions:

- 3-D patch embedding ``Conv3d(3, D, kernel=(k, p, p), stride=(k, p, p))`` (k = 1 in every
  released video model), a class token, a spatial position embedding (1, 1 + N, D) shared by the
  frames (the class token gets its first row) and a temporal one (1, T / k, D) added per frame.
- Spatial-first token order: [CLS, frame 0's N patches (row-major), frame 1's, ...], so a clip is
  L = 1 + (T / k) * N tokens: 1 + 8 * 196 = 1569 for 8 frames at 224 px, patch 16.
- ``depth`` blocks "Add -> Norm -> Mixer": ``residual = residual + drop_path(h); h =
  mixer(RMSNorm(residual))``, the residual stream kept in float32 (``residual_in_fp32``); after the
  last block a final add and RMSNorm (``norm_f``); ``pool`` takes the class token (token 0).
- The mixer is the bidirectional Mamba of VideoMamba (forked from Vim): a shared ``in_proj:
  Linear(D, 2E)`` (E = 2D) gives x and z; a forward and a backward branch, each with its own
  depthwise causal ``Conv1d`` (kernel 4) + SiLU, ``x_proj: Linear(E, R + 2N)`` (R = ceil(D / 16),
  N = 16), ``dt_proj: Linear(R, E)``, ``A_log`` (E, N) and ``D`` (E,); the backward branch reads
  the reversed sequence (x and z reversed) and its output is reversed back; y = y_fwd + y_bwd
  (no division by two); a shared ``out_proj: Linear(E, D)``. The scan is
  ``promptcl.backbones.selective_scan`` (chunked on CPUs, mamba_ssm's CUDA kernel on GPUs when
  installed).
- Input: clips (B, T, C, H, W) in [0, 1], normalised by the backbone with ImageNet's mean and std
  (the official data pipelines' ``Normalize``).

Prompts (``prompt_kinds = {"tokens", "hook"}``), per block i, in this order:

- ``tokens[i]`` (B, L, D), (1, L, D) or (L, D): inserted right after the class token, as for the
  ViT. At i = 0 into the embedded sequence; at i > 0 into the residual stream, with zeros in the
  hidden states at their positions, so the stream holds the prompt itself from block i on
  [promptcl's choice: VideoMamba has no prompts; VPT-style methods need one].
- ``hook(i, h) -> h``: called before block i on the block's *hidden states* h (B, L, D), after
  any tokens inserted at i. A VideoMamba block adds h to the residual stream and mixes the
  normalised sum, so at i = 0 h is the embedded sequence (the residual stream is still empty)
  and at i > 0 h is block i-1's mixer output, before block i adds it to the stream; whatever the
  hook writes there is *added* to the stream (SSP, specs/video-methods.md §2.3). At i = 0 the
  hook may change the sequence length (SSP appends K slots to every frame); at i > 0 it must
  keep it (the stream has that length), else a ``ValueError``.

Token layout seen by a hook: [CLS] + [inserted prompt tokens] + F frame groups of M tokens each,
F = T / k (T the clip's frame count), M = ``patches_per_frame`` (+ whatever a hook appended per
frame at layer 0). ``split_frames(h, frames, lead)`` gives (B, lead, D) and (B, F, M, D);
``join_frames`` is its inverse.

Departures from the official code:

- No CUDA-only paths: plain RMSNorm and add instead of the fused Triton add-norm kernel,
  ``F.conv1d`` instead of ``causal_conv1d``, the chunked scan instead of ``selective_scan_cuda``
  (the same arithmetic; float rounding differs). No inference cache (``inference_params``).
- Clips of another length than ``num_frames`` are accepted: the temporal embedding is resized
  linearly on the fly (align_corners False), as the official fine-tuning script resizes it once
  at load time; the token count follows T. A weight file's own frame count is adopted at load.
- Activation checkpointing (``backbone.activation_checkpointing``) recomputes whole blocks (add,
  norm and mixer); the official ``use_checkpoint`` recomputes the mixer of the first
  ``checkpoint_num`` blocks. Only applied when gradients are on.
- Parameter names are promptcl's (the two scan directions are two ``ScanBranch`` modules);
  official weight files are read through ``OFFICIAL_KEY_MAP``; the classification head is dropped.
- ``num_heads`` is 0: there is no attention, so the ``prefix``, ``residual`` and ``value`` kinds
  do not apply.
- Stochastic depth (``drop_path``, default 0; the official fine-tuning used 0.1-0.4) is kept as
  in the code: block i drops the h it receives with rate [0, linspace(0, p, depth)][i], the final
  add with rate p. A frozen backbone is in eval mode, where it does nothing.

Random initialisation follows the official constructor, including what it does to Mamba's own
init [read in the code, not stated in the paper]: ``segm_init_weights`` re-draws every Linear
weight from N(0, 0.02) and zeroes every Linear bias, ``dt_proj``'s too (so dt starts at
softplus(0) = 0.69 rather than Mamba's 0.001-0.1); ``out_proj`` is then re-drawn (Kaiming uniform)
and divided by sqrt(depth); A = -(1..N) per channel (S4D-real), D = 1; the class and temporal
embeddings start at zero, the spatial one at N(0, 0.02). ``init_dt_like_mamba`` restores Mamba's
dt init for training from scratch (``promptcl pretrain videomamba``).

Facts read in the official code rather than the paper: the ImageNet normalisation (its
``datasets/*.py``), the init above, the head-free state-dict layout (``OFFICIAL_KEY_MAP``) and the
interpolation modes. Parameter counts computed here (no download): Ti 6.96 M, S 25.41 M, M 73.65 M
without the head (73.88 M with a 400-class head; the SSP paper's table: 74.00 M).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from promptcl.backbones.base import Backbone, LayerPrompts, insert_tokens
from promptcl.backbones.selective_scan import Impl, selective_scan
from promptcl.errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_URL = "https://pjlab-gvm-data.oss-cn-shanghai.aliyuncs.com/videomamba/{file}"
MODEL_ZOO = "OpenGVLab/VideoMamba, videomamba/video_sm/MODEL_ZOO.md"


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: each sample's x zeroed with probability p (rescaled by 1 / (1 - p))."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *(1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (no bias), computed in float32 at least."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight
        return out.to(x.dtype)


class ScanBranch(nn.Module):
    """One scan direction of the bidirectional mixer: conv, projections, A and D of its own."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int):
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv = nn.Conv1d(
            d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        # Mamba's own dt_proj init (dt in [0.001, 0.1]) is left out: VideoMamba's constructor
        # re-draws the weight and zeroes the bias (VideoMamba._init).
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))  # A = -exp(A_log) = -(1..N)
        self.D = nn.Parameter(torch.ones(d_inner))
        with torch.no_grad():  # (computed on the CPU: also when building on the meta device)
            self.A_log.copy_(
                torch.arange(1, d_state + 1.0, device="cpu").log().expand_as(self.A_log)
            )

    def forward(self, x: Tensor, z: Tensor, scan: Impl) -> Tensor:
        """x, z (B, E, L) -> (B, E, L): causal conv, SiLU, the selective scan gated by silu(z)."""
        L = x.shape[-1]
        x = F.silu(self.conv(x)[..., :L])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1
        )  # (B, L, R), (B, L, N), (B, L, N)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, E); the bias goes in as delta_bias
        return selective_scan(
            x,
            dt.transpose(1, 2),
            -torch.exp(_float32(self.A_log)),
            B.transpose(1, 2),
            C.transpose(1, 2),
            _float32(self.D),
            z,
            delta_bias=_float32(self.dt_proj.bias),
            delta_softplus=True,
            impl=scan,
        )


def _float32(t: Tensor) -> Tensor:
    """At least float32 (Mamba keeps A, D and the dt bias in float32; float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class BiMamba(nn.Module):
    """The bidirectional Mamba mixer (VideoMamba's "v2" bimamba): (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        d_inner, dt_rank = expand * dim, math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.fwd = ScanBranch(d_inner, d_state, d_conv, dt_rank)
        self.bwd = ScanBranch(d_inner, d_state, d_conv, dt_rank)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.scan: Impl = "auto"

    def forward(self, h: Tensor) -> Tensor:
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        y = self.fwd(x, z, self.scan)
        y = y + self.bwd(x.flip(-1), z.flip(-1), self.scan).flip(-1)
        return self.out_proj(y.transpose(1, 2))  # (B, L, D)


class MambaBlock(nn.Module):
    """Add -> RMSNorm -> Mixer; returns (mixer output, residual stream)."""

    def __init__(self, dim: int, drop_path: float, eps: float, **mixer: Any):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.mixer = BiMamba(dim, **mixer)
        self.drop_path = drop_path  # on the incoming h: the previous block's mixer output

    def forward(self, h: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        if residual is None:
            residual = h.to(torch.promote_types(h.dtype, torch.float32))
        else:
            residual = residual + _drop_path(h, self.drop_path, self.training).to(residual.dtype)
        return self.mixer(self.norm(residual).to(h.dtype)), residual


class VideoMamba(Backbone):
    """VideoMamba: (B, T, C, H, W) clips in [0, 1] -> (B, 1 + (T / k) * N, D) tokens after the
    final norm; ``pool`` takes the class token. See the module docstring for the prompts.

    Prompts: ``tokens[i]`` are inserted after the class token before block i (into the residual
    stream when i > 0). ``hook(i, h)`` runs before block i on the block's hidden states h
    (B, L, D): at i = 0 the embedded tokens [CLS, (inserted tokens), frame 0's patches, frame 1's,
    ...]; at i > 0 block i-1's mixer output, before block i adds it to the residual stream. It
    returns the new h; it may change the sequence length only at i = 0.

    Sizes for methods: ``embed_dim`` D, ``depth``, ``feature_dim`` (= D), ``image_size``,
    ``patch_size``, ``num_frames`` (T of the temporal embedding; other T are resized to),
    ``tubelet`` (k), ``patches_per_frame`` (N), ``tokens_per_clip(T)`` (1 + (T / k) * N).
    """

    prompt_kinds: ClassVar[frozenset[str]] = frozenset({"tokens", "hook"})
    modality: ClassVar[str] = "video"

    def __init__(
        self,
        embed_dim: int = 192,
        depth: int = 24,
        image_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 8,
        tubelet: int = 1,
        channels: int = 3,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
        activation_checkpointing: bool = False,
        scan: Impl = "auto",
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        if num_frames % tubelet:
            raise ValueError(f"num_frames {num_frames} is not a multiple of tubelet {tubelet}")
        self.embed_dim = self.feature_dim = embed_dim
        self.depth, self.num_heads = depth, 0
        self.image_size, self.patch_size, self.tubelet = image_size, patch_size, tubelet
        self.num_frames = num_frames
        self.patches_per_frame = (image_size // patch_size) ** 2
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.activation_checkpointing = activation_checkpointing
        self.drop_path = drop_path

        self.patch_embed = nn.Conv3d(
            channels,
            embed_dim,
            kernel_size=(tubelet, patch_size, patch_size),
            stride=(tubelet, patch_size, patch_size),
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, embed_dim))
        self.temporal_pos_embed = nn.Parameter(torch.zeros(1, num_frames // tubelet, embed_dim))
        # official: [0] + linspace(0, drop_path, depth), block i drops the h it receives
        rates = [0.0] + [drop_path * k / max(depth - 1, 1) for k in range(depth)]
        mixer = dict(d_state=d_state, d_conv=d_conv, expand=expand)
        self.blocks = nn.ModuleList(
            MambaBlock(embed_dim, rates[i], norm_eps, **mixer) for i in range(depth)
        )
        self.norm_f = RMSNorm(embed_dim, norm_eps)
        self.set_scan(scan)
        self._init()

    def _init(self) -> None:
        """The official constructor's initialisation (module docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            weight = block.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            with torch.no_grad():
                weight /= math.sqrt(self.depth)

    @torch.no_grad()
    def init_dt_like_mamba(
        self, dt_min: float = 1e-3, dt_max: float = 0.1, generator: torch.Generator | None = None
    ) -> VideoMamba:
        """Re-draw every ``dt_proj`` as Mamba's own init does (VideoMamba's constructor undoes it):
        weight U(-R^-1/2, R^-1/2), bias softplus^-1(dt) with dt log-uniform in [dt_min, dt_max],
        so the scans start with long memories. A training recipe's choice, for training from
        scratch (``promptcl pretrain videomamba``)."""
        for block in self.blocks:
            for branch in (block.mixer.fwd, block.mixer.bwd):
                proj = branch.dt_proj
                bound = proj.in_features**-0.5
                proj.weight.uniform_(-bound, bound, generator=generator)
                u = torch.rand(proj.out_features, generator=generator)
                dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
                dt = dt.clamp(min=1e-4)
                proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        return self

    def set_scan(self, scan: Impl) -> VideoMamba:
        """Choose the selective scan of every block: auto, chunked, sequential or cuda."""
        for block in self.blocks:
            block.mixer.scan = scan
        return self

    # ---- the token layout ------------------------------------------------------------------

    def tokens_per_clip(self, frames: int | None = None) -> int:
        """1 + (T / k) * N: the sequence length of a clip of T frames (default num_frames)."""
        return 1 + (frames or self.num_frames) // self.tubelet * self.patches_per_frame

    def split_frames(
        self, h: Tensor, frames: int | None = None, lead: int = 1
    ) -> tuple[Tensor, Tensor]:
        """(B, lead + F * M, D) -> ((B, lead, D), (B, F, M, D)).

        ``lead``: the tokens before the first frame (the class token, plus any inserted prompt
        tokens); F = ``frames`` / k, frames defaulting to ``num_frames`` (give the clip's T when
        it differs). M is whatever each frame holds (N patches, plus slots a hook appended).
        """
        groups = (frames or self.num_frames) // self.tubelet
        B, L, D = h.shape
        if (L - lead) % groups:
            raise ValueError(
                f"{L - lead} tokens after the first {lead} do not split into {groups} frames"
            )
        return h[:, :lead], h[:, lead:].reshape(B, groups, (L - lead) // groups, D)

    @staticmethod
    def join_frames(head: Tensor, frames: Tensor) -> Tensor:
        """((B, lead, D), (B, F, M, D)) -> (B, lead + F * M, D): the inverse of split_frames."""
        return torch.cat([head, frames.flatten(1, 2)], dim=1)

    # ---- the forward -----------------------------------------------------------------------

    def temporal_embedding(self, groups: int) -> Tensor:
        """(1, groups, D): the temporal embedding, resized linearly if groups != its length."""
        t = self.temporal_pos_embed
        if t.shape[1] == groups:
            return t
        resized = F.interpolate(t.transpose(1, 2), size=groups, mode="linear", align_corners=False)
        return resized.transpose(1, 2)

    def embed(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) normalised clips -> (B, 1 + (T / k) * N, D) embedded tokens."""
        B, T = x.shape[:2]
        if T % self.tubelet:
            raise ValueError(f"clips of {T} frames do not split into tubelets of {self.tubelet}")
        p = self.patch_embed(x.transpose(1, 2))  # (B, D, T / k, H / p, W / p)
        p = p.flatten(3).permute(0, 2, 3, 1)  # (B, T / k, N, D), patches row-major
        p = p + self.pos_embed[:, 1:].unsqueeze(1)
        p = p + self.temporal_embedding(p.shape[1]).unsqueeze(2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        return torch.cat([cls, p.flatten(1, 2)], dim=1)  # spatial-first

    def forward(self, x: Tensor, prompts: LayerPrompts | None = None) -> Tensor:
        """(B, T, C, H, W) clips in [0, 1] -> (B, L, D) tokens after the final norm."""
        prompts = prompts or LayerPrompts()
        prompts.check(self.depth, self.prompt_kinds, type(self).__name__)
        if x.dim() != 5 or x.shape[2] != 3:
            got = "an image batch (B, C, H, W)" if x.dim() == 4 else f"shape {tuple(x.shape)}"
            raise ValueError(
                f"VideoMamba takes clips (B, T, 3, H, W) with pixels in [0, 1], got {got}: use a "
                "video dataset, or an image backbone for images"
            )
        h = self.embed(self.normalize(x))  # (B, L, D)
        residual: Tensor | None = None
        for i, block in enumerate(self.blocks):
            if i in prompts.tokens:
                h, residual = self._insert(h, residual, prompts.tokens[i])
            if prompts.hook is not None:
                h = self._hook(prompts.hook, i, h, residual)
            if self.activation_checkpointing and torch.is_grad_enabled():
                h, residual = checkpoint(block, h, residual, use_reentrant=False)
            else:
                h, residual = block(h, residual)
        if residual is None:  # depth 0
            residual = h
        else:
            residual = residual + _drop_path(h, self.drop_path, self.training).to(residual.dtype)
        return self.norm_f(residual).to(h.dtype)  # (B, L, D)

    @staticmethod
    def _insert(h: Tensor, residual: Tensor | None, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        if residual is None:
            return insert_tokens(h, tokens, 1), None
        zeros = tokens.new_zeros(tokens.shape[-2:])  # (L, D)
        return insert_tokens(h, zeros, 1), insert_tokens(residual, tokens, 1)

    def _hook(self, hook, i: int, h: Tensor, residual: Tensor | None) -> Tensor:
        out = hook(i, h)
        if out.dim() != 3 or out.shape[0] != h.shape[0] or out.shape[2] != self.embed_dim:
            raise ValueError(
                f"the hook at layer {i} returned shape {tuple(out.shape)}; it must return "
                f"(B, L, {self.embed_dim}) with B = {h.shape[0]}"
            )
        if residual is not None and out.shape[1] != residual.shape[1]:
            raise ValueError(
                f"the hook at layer {i} changed the sequence length {h.shape[1]} -> "
                f"{out.shape[1]}: after layer 0 the residual stream fixes it (only the hook at "
                "layer 0 may insert or drop tokens)"
            )
        return out

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, L, D) -> (B, D): the class token."""
        return tokens[:, 0]


# ---- weight files ----------------------------------------------------------------------------

# Official state-dict names -> promptcl's (regular expressions, matched in full).
OFFICIAL_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.\1"),
    (r"cls_token", "cls_token"),
    (r"pos_embed", "pos_embed"),
    (r"temporal_pos_embedding", "temporal_pos_embed"),
    (r"layers\.(\d+)\.norm\.weight", r"blocks.\1.norm.weight"),
    (r"layers\.(\d+)\.mixer\.(in_proj|out_proj)\.weight", r"blocks.\1.mixer.\2.weight"),
    (r"layers\.(\d+)\.mixer\.conv1d\.(weight|bias)", r"blocks.\1.mixer.fwd.conv.\2"),
    (r"layers\.(\d+)\.mixer\.conv1d_b\.(weight|bias)", r"blocks.\1.mixer.bwd.conv.\2"),
    (r"layers\.(\d+)\.mixer\.(x_proj|dt_proj)\.(weight|bias)", r"blocks.\1.mixer.fwd.\2.\3"),
    (r"layers\.(\d+)\.mixer\.(x_proj|dt_proj)_b\.(weight|bias)", r"blocks.\1.mixer.bwd.\2.\3"),
    (r"layers\.(\d+)\.mixer\.A_log", r"blocks.\1.mixer.fwd.A_log"),
    (r"layers\.(\d+)\.mixer\.A_b_log", r"blocks.\1.mixer.bwd.A_log"),
    (r"layers\.(\d+)\.mixer\.D", r"blocks.\1.mixer.fwd.D"),
    (r"layers\.(\d+)\.mixer\.D_b", r"blocks.\1.mixer.bwd.D"),
    (r"norm_f\.weight", "norm_f.weight"),
)
OFFICIAL_DROPPED = (r"head\.(weight|bias)",)  # the classification head


def map_official_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An official VideoMamba state dict in promptcl's names, without the head.

    Raises ``WeightsError`` naming the keys that are neither mapped nor dropped.
    """
    out, unknown = {}, []
    for key, value in state.items():
        for pattern, target in OFFICIAL_KEY_MAP:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, target, key)] = value
                break
        else:
            if not any(re.fullmatch(p, key) for p in OFFICIAL_DROPPED):
                unknown.append(key)
    if unknown:
        raise WeightsError(
            f"not a VideoMamba checkpoint: {len(unknown)} keys the official model does not "
            f"have, e.g. {', '.join(unknown[:5])}"
        )
    return out


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a weight file: safetensors, or a torch file read with weights_only (its
    state dict possibly under "model", "module" or "state_dict", keys possibly "module."-prefixed).
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(
            f"could not read {path} as a tensor file ({type(err).__name__}: "
            f"{(str(err).strip().splitlines() or [''])[0]}). promptcl reads weights without "
            "running pickled code: on a machine you trust, save its state dict alone "
            "(torch.save(torch.load(f, weights_only=False)['model'], 'clean.pth'))"
        ) from err
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: VideoMamba, path: Path) -> VideoMamba:
    """Load an official VideoMamba file (through ``OFFICIAL_KEY_MAP``) or one of promptcl's own.

    The spatial position embedding is resized (bicubic, as the official fine-tuning does) when the
    file's patch grid differs; the file's temporal embedding is adopted with its length
    (``num_frames`` follows; clips of other lengths resize it on the fly). Width or depth
    mismatches, and files of other architectures, raise ``WeightsError``.
    """
    state = read_state_dict(path)
    if any(k.startswith("layers.") or k == "temporal_pos_embedding" for k in state):
        state = map_official_keys(state)
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise WeightsError(
            f"{path} is not a VideoMamba checkpoint of this layout: unexpected keys "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
        )
    missing = sorted(set(own) - set(state))
    if missing:
        raise WeightsError(
            f"{path} lacks {len(missing)} of the model's tensors, e.g. {', '.join(missing[:5])}"
        )
    _check_size(model, state, path)
    state["pos_embed"] = _resize_spatial(state["pos_embed"], model.patches_per_frame)
    frames = state["temporal_pos_embed"].shape[1]
    if frames != model.temporal_pos_embed.shape[1]:
        model.temporal_pos_embed = nn.Parameter(torch.zeros_like(state["temporal_pos_embed"]))
        model.num_frames = frames * model.tubelet
    model.load_state_dict(state)
    return model


def _check_size(model: VideoMamba, state: dict[str, Tensor], path: Path) -> None:
    width = state["cls_token"].shape[-1] if "cls_token" in state else None
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    if (width, depth) != (model.embed_dim, model.depth):
        known = {(192, 24): "videomamba-ti", (384, 24): "videomamba-s", (576, 32): "videomamba-m"}
        hint = f" (that is {known[width, depth]})" if (width, depth) in known else ""
        raise WeightsError(
            f"{path} holds a VideoMamba of width {width} and depth {depth}{hint}; this preset has "
            f"width {model.embed_dim} and depth {model.depth}: choose the matching preset"
        )
    kernel = state.get("patch_embed.weight")
    if kernel is not None and tuple(kernel.shape[2:]) != tuple(model.patch_embed.weight.shape[2:]):
        raise WeightsError(
            f"{path} embeds patches with a kernel {tuple(kernel.shape[2:])}, this preset with "
            f"{tuple(model.patch_embed.weight.shape[2:])}"
        )


def _resize_spatial(pos: Tensor, patches: int) -> Tensor:
    """(1, 1 + n, D) -> (1, 1 + patches, D): the patch rows resized on their square grid."""
    n = pos.shape[1] - 1
    if n == patches:
        return pos
    old, new = math.isqrt(n), math.isqrt(patches)
    if old * old != n:
        raise WeightsError(f"a spatial position embedding of {n} patches is not a square grid")
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat(
        [pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, patches, -1).to(pos.dtype)], 1
    )


def build(
    name: str, overrides: dict[str, Any], source: Path | str | None, **options: Any
) -> VideoMamba:
    """A frozen VideoMamba preset: random (source None), from a local file (Path), or, for a
    hub file name (str), an error saying where to download it."""
    if isinstance(source, str):
        url = CHECKPOINT_URL.format(file=source)
        raise WeightsError(
            f"backbone {name!r}: promptcl does not download VideoMamba weights. Download "
            f"{source} ({url}, listed in {MODEL_ZOO}), then set `backbone.weights: "
            f"/path/to/{source}`; or set `backbone.pretrained: false` for random weights."
        )
    model = VideoMamba(**overrides, **options)
    if source is not None:
        load_weights(model, source)
    return model.freeze()
