"""VideoMamba (promptcl/backbones/videomamba.py) and its selective scan (selective_scan.py).

The model tests use a tiny VideoMamba in float64 (width 16, 2 blocks, 16-pixel frames of 2 x 2
patches) and compare it with a forward written here from the official code's steps, on weights
stored under the official names.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from promptcl.backbones import zoo  # noqa: F401  (registers the presets)
from promptcl.backbones.base import LayerPrompts
from promptcl.backbones.selective_scan import (
    SEQUENTIAL_ABOVE,
    chunk_length,
    cuda_scan_available,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)
from promptcl.backbones.videomamba import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OFFICIAL_KEY_MAP,
    VideoMamba,
    load_weights,
    map_official_keys,
)
from promptcl.config import BackboneConfig
from promptcl.errors import ConfigError, UnsupportedPromptError, WeightsError
from promptcl.registry import backbones

TINY = dict(embed_dim=16, depth=2, image_size=16, patch_size=8, num_frames=3)
D, DEPTH, T, N = 16, 2, 3, 4  # width, blocks, frames, patches per frame
E, STATE, RANK = 32, 16, 1  # inner width 2D, d_state, dt rank ceil(D / 16)


def scan_inputs(batch: int, width: int, state: int, length: int, seed: int = 0) -> list[Tensor]:
    """u, delta, A, B, C, D, z, delta_bias in float64, all requiring gradients."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, delta, z = r(batch, width, length), r(batch, width, length), r(batch, width, length)
    A = -torch.rand(width, state, generator=g, dtype=torch.float64) * 3
    B, C = r(batch, state, length), r(batch, state, length)
    return [t.requires_grad_() for t in (u, delta, A, B, C, r(width), z, r(width))]


def outputs_and_grads(scan, args: list[Tensor]) -> list[Tensor]:
    y = scan(*args)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)  # a generic loss
    return [y, *torch.autograd.grad((y * weights).sum() + y.square().sum(), args)]


# ---- the selective scan ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 5, 8, 9, 16, 17, 31])
@pytest.mark.parametrize("chunk", [2, 3, 4, 8, None])
def test_chunked_scan_equals_the_sequential_reference(length, chunk):
    """Forward and the gradients of all eight inputs, float64, to 1e-10: lengths that are and are
    not multiples of the chunk, shorter than two chunks (the plain loop), one past a boundary."""
    args = scan_inputs(2, 3, 4, length, seed=length)
    ref = outputs_and_grads(lambda *a: selective_scan_ref(*a, delta_softplus=True), args)
    got = outputs_and_grads(
        lambda *a: selective_scan_chunked(*a, delta_softplus=True, chunk=chunk), args
    )
    names = ["y", "u", "delta", "A", "B", "C", "D", "z", "bias"]
    for name, r, c in zip(names, ref, got, strict=True):
        assert torch.allclose(r, c, rtol=0, atol=1e-10), (name, (r - c).abs().max())


def test_chunked_scan_gradients_match_finite_differences():
    args = [t.detach().requires_grad_() for t in scan_inputs(1, 2, 3, 7, seed=1)]
    for chunk in (3, 7):  # chunks + a ragged end; the plain loop
        scan = lambda *a: selective_scan_chunked(*a, delta_softplus=True, chunk=chunk)  # noqa: B023,E731
        assert torch.autograd.gradcheck(scan, args)


def test_scan_without_optional_inputs_matches_reference():
    u, delta, A, B, C = scan_inputs(2, 3, 4, 12)[:5]
    ref = selective_scan_ref(u, delta, A, B, C)
    for chunk in (3, 12):
        assert torch.allclose(
            selective_scan_chunked(u, delta, A, B, C, chunk=chunk), ref, atol=1e-12
        )


def test_scan_keeps_the_input_dtype_and_computes_in_float32():
    u, delta, A, B, C, Dp, z, bias = (t.detach() for t in scan_inputs(1, 4, 4, 10))
    half = [t.to(torch.bfloat16) for t in (u, delta, A, B, C, Dp, z, bias)]
    y = selective_scan_chunked(*half, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    exact = selective_scan_ref(*[t.double() for t in half], delta_softplus=True)
    assert torch.allclose(y.double(), exact, rtol=2e-2, atol=2e-2)


def test_chunk_length_runs_the_loop_for_large_steps():
    assert chunk_length(1569, SEQUENTIAL_ABOVE) == 1569
    assert chunk_length(1569, SEQUENTIAL_ABOVE - 1) == round(math.sqrt(1569 / 2)) == 28
    assert chunk_length(3, 1) == 2


def test_scan_dispatch():
    args = [t.detach() for t in scan_inputs(1, 2, 3, 6)]
    ref = selective_scan_ref(*args, delta_softplus=True)
    for impl in ("auto", "chunked", "sequential"):
        assert torch.allclose(selective_scan(*args, delta_softplus=True, impl=impl), ref)
    assert not cuda_scan_available()  # no mamba_ssm here: "auto" took the chunked scan
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan(*args, impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        selective_scan(*args, impl="fast")  # type: ignore[arg-type]


# ---- a checkpoint in the official layout, and the official forward -----------------------------


def official_state(seed: int = 0, frames: int = T, grid: int = 2) -> dict[str, Tensor]:
    """Random weights under the official VideoMamba names (videomamba.py, mamba_simple.py)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.3 * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    sd = {
        "cls_token": r(1, 1, D),
        "pos_embed": r(1, grid * grid + 1, D),
        "temporal_pos_embedding": r(1, frames, D),
        "patch_embed.proj.weight": r(D, 3, 1, 8, 8),
        "patch_embed.proj.bias": r(D),
        "norm_f.weight": 1 + r(D),
        "head.weight": r(400, D),
        "head.bias": r(400),
    }
    for i in range(DEPTH):
        p = f"layers.{i}."
        sd[p + "norm.weight"] = 1 + r(D)
        sd[p + "mixer.in_proj.weight"] = r(2 * E, D)
        sd[p + "mixer.out_proj.weight"] = r(D, E)
        for s in ("", "_b"):
            sd[p + f"mixer.conv1d{s}.weight"] = r(E, 1, 4)
            sd[p + f"mixer.conv1d{s}.bias"] = r(E)
            sd[p + f"mixer.x_proj{s}.weight"] = r(RANK + 2 * STATE, E)
            sd[p + f"mixer.dt_proj{s}.weight"] = r(E, RANK)
            sd[p + f"mixer.dt_proj{s}.bias"] = r(E) - 2
            sd[p + f"mixer.D{s}"] = r(E)
        sd[p + "mixer.A_log"] = torch.log(torch.arange(1, STATE + 1.0)).repeat(E, 1) + r(E, STATE)
        sd[p + "mixer.A_b_log"] = torch.log(torch.arange(1, STATE + 1.0)).repeat(E, 1) + r(E, STATE)
    return sd


def official_forward(sd: dict[str, Tensor], clips: Tensor) -> Tensor:
    """VideoMamba.forward_features up to norm_f (all tokens), the non-fused path, from the
    official code's steps; clips (B, T, C, H, W) in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=clips.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=clips.dtype).view(3, 1, 1)
    x = ((clips - mean) / std).transpose(1, 2)  # (B, C, T, H, W)
    x = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(1, 8, 8))
    B, C, t, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(B * t, H * W, C)
    x = torch.cat([sd["cls_token"].expand(B * t, -1, -1), x], dim=1) + sd["pos_embed"]
    cls = x[:B, :1]
    x = x[:, 1:].reshape(B, t, H * W, C).transpose(1, 2).reshape(B * H * W, t, C)
    x = x + sd["temporal_pos_embedding"]
    x = x.reshape(B, H * W, t, C).transpose(1, 2).reshape(B, t * H * W, C)
    hidden, residual = torch.cat([cls, x], dim=1), None

    def rms(v: Tensor, w: Tensor) -> Tensor:
        return v * torch.rsqrt(v.square().mean(-1, keepdim=True) + 1e-5) * w

    def scan(u, delta, A, Bm, Cm, Dv, z):  # mamba_ssm's selective_scan_ref, softplus on
        state, ys = torch.zeros(u.shape[0], *A.shape, dtype=u.dtype), []
        for i in range(u.shape[-1]):
            state = torch.exp(delta[:, :, i, None] * A) * state
            state = state + (delta[:, :, i] * u[:, :, i])[..., None] * Bm[:, None, :, i]
            ys.append((state * Cm[:, None, :, i]).sum(-1))
        return (torch.stack(ys, -1) + Dv[:, None] * u) * F.silu(z)

    def branch(xz: Tensor, p: str, s: str) -> Tensor:  # mamba_inner_fn_no_out_proj
        x, z = xz.chunk(2, dim=1)
        L = x.shape[-1]
        conv = F.conv1d(
            x, sd[p + f"conv1d{s}.weight"], sd[p + f"conv1d{s}.bias"], padding=3, groups=E
        )
        x = F.silu(conv[..., :L])
        dbl = x.transpose(1, 2) @ sd[p + f"x_proj{s}.weight"].T  # (B, L, R + 2N)
        delta = (dbl[..., :RANK] @ sd[p + f"dt_proj{s}.weight"].T).transpose(1, 2)
        delta = F.softplus(delta + sd[p + f"dt_proj{s}.bias"][:, None])
        Bm, Cm = dbl[..., RANK : RANK + STATE].transpose(1, 2), dbl[..., -STATE:].transpose(1, 2)
        A = -torch.exp(sd[p + ("A_b_log" if s else "A_log")])
        return scan(x, delta, A, Bm, Cm, sd[p + f"D{s}"], z)

    for i in range(DEPTH):
        residual = hidden if residual is None else residual + hidden
        normed = rms(residual, sd[f"layers.{i}.norm.weight"])
        p = f"layers.{i}.mixer."
        xz = (normed @ sd[p + "in_proj.weight"].T).transpose(1, 2)  # (B, 2E, L)
        y = branch(xz, p, "") + branch(xz.flip([-1]), p, "_b").flip([-1])
        hidden = y.transpose(1, 2) @ sd[p + "out_proj.weight"].T
    return rms(residual + hidden, sd["norm_f.weight"])


def set_by_hand(model: VideoMamba, sd: dict[str, Tensor]) -> VideoMamba:
    """The official weights put into promptcl's modules attribute by attribute."""
    with torch.no_grad():
        model.patch_embed.weight.copy_(sd["patch_embed.proj.weight"])
        model.patch_embed.bias.copy_(sd["patch_embed.proj.bias"])
        model.cls_token.copy_(sd["cls_token"])
        model.pos_embed.copy_(sd["pos_embed"])
        model.temporal_pos_embed.copy_(sd["temporal_pos_embedding"])
        model.norm_f.weight.copy_(sd["norm_f.weight"])
        for i, block in enumerate(model.blocks):
            p, m = f"layers.{i}.", block.mixer
            block.norm.weight.copy_(sd[p + "norm.weight"])
            m.in_proj.weight.copy_(sd[p + "mixer.in_proj.weight"])
            m.out_proj.weight.copy_(sd[p + "mixer.out_proj.weight"])
            for branch, s in ((m.fwd, ""), (m.bwd, "_b")):
                branch.conv.weight.copy_(sd[p + f"mixer.conv1d{s}.weight"])
                branch.conv.bias.copy_(sd[p + f"mixer.conv1d{s}.bias"])
                branch.x_proj.weight.copy_(sd[p + f"mixer.x_proj{s}.weight"])
                branch.dt_proj.weight.copy_(sd[p + f"mixer.dt_proj{s}.weight"])
                branch.dt_proj.bias.copy_(sd[p + f"mixer.dt_proj{s}.bias"])
                branch.D.copy_(sd[p + f"mixer.D{s}"])
            m.fwd.A_log.copy_(sd[p + "mixer.A_log"])
            m.bwd.A_log.copy_(sd[p + "mixer.A_b_log"])
    return model


@pytest.fixture(scope="module")
def official():
    return official_state()


@pytest.fixture
def net(official) -> VideoMamba:
    return set_by_hand(VideoMamba(**TINY).double(), official).freeze()


@pytest.fixture
def clips() -> Tensor:
    return torch.rand(
        2, T, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )


def test_forward_equals_the_official_forward(net, official, clips):
    """Layout (CLS, spatial-first, shared spatial + per-frame temporal embeddings), blocks,
    bidirectional mixer and final norm, against the official steps on the same weights."""
    tokens = net(clips)
    assert tokens.shape == (2, 1 + T * N, D)
    assert torch.allclose(tokens, official_forward(official, clips), rtol=0, atol=1e-10)
    assert torch.equal(net.pool(tokens), tokens[:, 0])
    for impl in ("sequential", "chunked"):
        assert torch.allclose(net.set_scan(impl)(clips), tokens, rtol=0, atol=1e-10)


@pytest.mark.parametrize("wrapper", [None, "model", "module"])
def test_official_checkpoint_loads_through_the_key_map(tmp_path, official, clips, wrapper, net):
    path = tmp_path / "videomamba_official.pth"
    torch.save(official if wrapper is None else {wrapper: official, "epoch": 3}, path)
    loaded = load_weights(VideoMamba(**TINY).double(), path)
    for name, tensor in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.allclose(loaded(clips), net(clips), rtol=0, atol=1e-12)  # bitwise: BLAS order


def test_key_map_covers_every_official_name_and_drops_only_the_head(official):
    mapped = map_official_keys(official)
    assert set(mapped) == set(VideoMamba(**TINY).state_dict())
    assert len(mapped) == len(official) - 2  # head.weight, head.bias
    assert all(len(pair) == 2 for pair in OFFICIAL_KEY_MAP)


def test_preset_loads_an_official_file_and_resizes_position_embeddings(tmp_path):
    """A 4-frame file at a 3 x 3 patch grid into a 2 x 2 preset: the spatial embedding is resized
    bicubically (as the official fine-tuning does), the file's frame count is adopted, and other
    clip lengths resize the temporal embedding linearly on the fly."""
    sd = official_state(seed=1, frames=4, grid=3)
    path = tmp_path / "f4.pth"
    torch.save({"model": sd}, path)
    net = load_weights(VideoMamba(**TINY).double(), path)
    assert net.num_frames == 4 and net.temporal_pos_embed.shape == (1, 4, D)
    grid = sd["pos_embed"][:, 1:].reshape(1, 3, 3, D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False)
    assert torch.allclose(net.pos_embed[:, 1:], grid.permute(0, 2, 3, 1).reshape(1, 4, D))
    assert torch.equal(net.pos_embed[:, 0], sd["pos_embed"][:, 0])
    clip6 = torch.rand(1, 6, 3, 16, 16, dtype=torch.float64)
    resized = VideoMamba(**{**TINY, "num_frames": 6}).double()
    state = net.state_dict()
    t = sd["temporal_pos_embedding"].transpose(1, 2)
    state["temporal_pos_embed"] = F.interpolate(t, size=6, mode="linear").transpose(1, 2)
    resized.load_state_dict(state)
    out = net(clip6)
    assert out.shape == (1, 1 + 6 * N, D)
    assert torch.allclose(out, resized(clip6), atol=1e-12)


def test_weights_of_another_architecture_are_refused(tmp_path):
    vit = {"cls_token": torch.zeros(1, 1, D), "blocks.0.attn.qkv.weight": torch.zeros(48, 16)}
    torch.save(vit, tmp_path / "vit.pth")
    with pytest.raises(WeightsError, match="not a VideoMamba checkpoint"):
        load_weights(VideoMamba(**TINY), tmp_path / "vit.pth")
    official = {**official_state(), "blocks.0.attn.qkv.weight": torch.zeros(48, 16)}
    torch.save(official, tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match="blocks.0.attn.qkv.weight"):
        load_weights(VideoMamba(**TINY), tmp_path / "mixed.pth")
    torch.save(official_state(), tmp_path / "narrow.pth")
    with pytest.raises(WeightsError, match="width 16 and depth 2.*width 32 and depth 2"):
        load_weights(VideoMamba(**{**TINY, "embed_dim": 32}), tmp_path / "narrow.pth")
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 16)}}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="lacks"):
        load_weights(VideoMamba(**TINY), tmp_path / "partial.pth")


def test_presets_and_the_download_message():
    ti = backbones.get("videomamba-ti")(BackboneConfig(name="videomamba-ti", pretrained=False))
    assert (ti.embed_dim, ti.depth, ti.num_frames, ti.patches_per_frame) == (192, 24, 8, 196)
    assert (ti.image_size, ti.patch_size, ti.modality, ti.feature_dim) == (224, 16, "video", 192)
    assert ti.frozen and not any(p.requires_grad for p in ti.parameters())
    assert ti.tokens_per_clip() == 1569
    with pytest.raises(WeightsError, match="videomamba_m16_k400_mask_ft_f8_res224.pth.*MODEL_ZOO"):
        backbones.get("videomamba-m")(BackboneConfig(name="videomamba-m"))
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        backbones.get("tiny-vit")(BackboneConfig(name="tiny-vit", activation_checkpointing=True))


def test_videomamba_m_has_74_million_parameters():
    """73,645,056 without the classification head, 73,875,856 with the K400 head (400 classes):
    SSP's table gives VideoMamba-M 74.00 M. Ti and S: 6.96 M and 25.4 M (the paper: 7 M, 26 M)."""
    with torch.device("meta"):
        sizes = {
            name: sum(p.numel() for p in VideoMamba(embed_dim=w, depth=d).parameters())
            for name, w, d in (("Ti", 192, 24), ("S", 384, 24), ("M", 576, 32))
        }
    assert sizes["M"] == 73_645_056
    assert abs((sizes["M"] + 577 * 400) / 1e6 - 74.00) < 0.15
    assert sizes["Ti"] == 6_956_544 and sizes["S"] == 25_414_656


# ---- prompts -------------------------------------------------------------------------------------


def test_identity_hook_changes_nothing_and_sees_the_hidden_states(net, clips):
    seen: list[tuple[int, Tensor]] = []

    def hook(i: int, h: Tensor) -> Tensor:
        seen.append((i, h.clone()))
        return h

    assert torch.equal(net(clips, LayerPrompts(hook=hook)), net(clips))
    assert [i for i, _ in seen] == list(range(DEPTH))
    embedded = net.embed(net.normalize(clips))
    assert torch.equal(seen[0][1], embedded)  # layer 0: the embedded tokens
    mixer_out, _ = net.blocks[0](embedded, None)
    assert torch.equal(seen[1][1], mixer_out)  # layer 1: block 0's mixer output, not the stream


def test_hook_output_is_added_to_the_residual_stream(net, clips):
    """What the hook writes at layer i > 0 reaches the stream as an addition: adding v to block
    0's mixer output equals adding v to the embedded tokens (the stream then holds both)."""
    v = torch.randn(
        1, 1 + T * N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    later = net(clips, LayerPrompts(hook=lambda i, h: h + v if i == 1 else h))
    h = net.embed(net.normalize(clips))
    h, residual = net.blocks[0](h, None)
    h, residual = net.blocks[1](h + v, residual)
    by_hand = net.norm_f(residual + h)
    assert torch.allclose(later, by_hand, atol=1e-12)
    assert not torch.allclose(later, net(clips))


def test_hook_may_lengthen_the_sequence_at_layer_0_only(net, clips):
    K = 3
    lengths = []

    def slots(i: int, h: Tensor) -> Tensor:  # SSP's K slots after each frame's patches
        lengths.append(h.shape[1])
        if i > 0:
            return h
        head, frames = net.split_frames(h, T)
        assert frames.shape == (2, T, N, D)
        extra = frames.new_zeros(2, T, K, D)
        return net.join_frames(head, torch.cat([frames, extra], dim=2))

    out = net(clips, LayerPrompts(hook=slots))
    assert out.shape == (2, 1 + T * (N + K), D)
    assert lengths == [1 + T * N, 1 + T * (N + K)]
    head, frames = net.split_frames(out, T)
    assert frames.shape == (2, T, N + K, D) and torch.equal(head[:, 0], out[:, 0])
    with pytest.raises(ValueError, match="after layer 0"):
        net(clips, LayerPrompts(hook=lambda i, h: torch.cat([h, h[:, :1]], 1) if i else h))
    with pytest.raises(ValueError, match="do not split into 3 frames"):
        net.split_frames(out[:, :-1], T)


def test_prompt_tokens_after_the_class_token(net, clips):
    p = torch.randn(2, 5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = net(clips, LayerPrompts(tokens={0: p}))
    assert out.shape == (2, 1 + 5 + T * N, D)
    stream = []
    net.blocks[1].norm.register_forward_pre_hook(lambda m, args: stream.append(args[0]))
    out = net(clips, LayerPrompts(tokens={1: p}))
    assert out.shape == (2, 1 + 5 + T * N, D)
    assert torch.equal(stream[-1][:, 1:6], p)  # inserted into the residual stream as they are
    with pytest.raises(UnsupportedPromptError, match="prefix"):
        net(clips, LayerPrompts(prefix={0: (p, p)}))


def test_bidirectional_scan_is_used(net, clips):
    """Reversing the token order changes the output (the two directions have their own
    weights), and removing the backward branch changes it."""
    mixer = net.blocks[0].mixer
    h = net.embed(net.normalize(clips))
    y = mixer(h)
    assert not torch.allclose(mixer(h.flip(1)).flip(1), y, atol=1e-6)
    forward_only = mixer.out_proj(
        mixer.fwd(*mixer.in_proj(h).transpose(1, 2).chunk(2, 1), "chunked").transpose(1, 2)
    )
    assert not torch.allclose(forward_only, y, atol=1e-6)
    out = net(clips)
    assert not torch.allclose(net(clips.flip(1)), out, atol=1e-6)  # frames in reverse
    original = mixer.bwd.forward
    mixer.bwd.forward = lambda x, z, scan: torch.zeros_like(x)
    try:
        assert not torch.allclose(net(clips), out, atol=1e-6)
    finally:
        mixer.bwd.forward = original


def test_activation_checkpointing_gives_equal_outputs_and_gradients(official, clips):
    """A trainable prompt (tokens at 0, an additive hook at 1) through the frozen backbone, with
    whole blocks recomputed in the backward pass or not."""
    results, calls = [], []
    for ckpt in (False, True):
        net = set_by_hand(VideoMamba(**TINY, activation_checkpointing=ckpt).double(), official)
        net.freeze()
        net.blocks[1].register_forward_pre_hook(lambda m, a, ckpt=ckpt: calls.append(ckpt))
        p = torch.full((1, 2, D), 0.1, dtype=torch.float64, requires_grad=True)
        v = torch.zeros(D, dtype=torch.float64, requires_grad=True)
        out = net(clips, LayerPrompts(tokens={0: p}, hook=lambda i, h, v=v: h + v if i else h))
        (out[:, 0].square().sum() + out.mean()).backward()
        results.append((out.detach(), p.grad, v.grad))
    (out0, gp0, gv0), (out1, gp1, gv1) = results
    assert torch.equal(out0, out1)
    assert torch.allclose(gp0, gp1, atol=1e-12) and torch.allclose(gv0, gv1, atol=1e-12)
    assert gp0.abs().sum() > 0 and gv0.abs().sum() > 0
    assert calls.count(False) == 1 and calls.count(True) == 2  # recomputed in the backward


def test_input_checks(net, clips):
    with pytest.raises(ValueError, match=r"clips \(B, T, 3, H, W\).*image batch"):
        net(clips[:, 0])
    with pytest.raises(ValueError, match="clips"):
        net(clips[:, :, :1])
    with pytest.raises(ValueError, match="tubelets"):
        VideoMamba(**{**TINY, "tubelet": 3, "num_frames": 3}).double()(clips[:, :2])


def test_frozen_backbone_stays_in_eval_mode(net):
    net.train()
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_initialisation_follows_the_official_constructor_and_mamba_on_request():
    """VideoMamba's constructor zeroes every Linear bias, dt_proj's too (dt = softplus(0));
    ``init_dt_like_mamba`` puts back Mamba's dt in [0.001, 0.1] (pretraining from scratch)."""
    net = VideoMamba(**TINY)
    branch = net.blocks[0].mixer.bwd
    assert torch.equal(branch.dt_proj.bias, torch.zeros(E))
    assert torch.allclose(-torch.exp(branch.A_log), -torch.arange(1, STATE + 1.0).expand(E, -1))
    assert torch.equal(branch.D, torch.ones(E)) and torch.equal(net.cls_token, torch.zeros(1, 1, D))
    net.init_dt_like_mamba(generator=torch.Generator().manual_seed(0))
    for block in net.blocks:
        for b in (block.mixer.fwd, block.mixer.bwd):
            dt = F.softplus(b.dt_proj.bias)
            assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 0.1 + 1e-9
            assert b.dt_proj.weight.abs().max() <= RANK**-0.5


def test_shipped_tiny_synth_videomamba():
    """The shipped weights load into their preset (fp16 file, float32 model) and give finite
    features of SynthMotion-sized clips; the file records its recipe."""
    from safetensors import safe_open

    from promptcl.backbones.zoo import WEIGHTS_DIR

    net = backbones.get("tiny-synth-videomamba")(BackboneConfig(name="tiny-synth-videomamba"))
    assert net.frozen and net.modality == "video" and net.pos_embed.dtype == torch.float32
    assert (net.embed_dim, net.depth, net.patches_per_frame, net.num_frames) == (64, 4, 16, 8)
    random = backbones.get("tiny-synth-videomamba")(
        BackboneConfig(name="tiny-synth-videomamba", pretrained=False)
    )
    assert not torch.equal(net.cls_token, random.cls_token)
    clips = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    features = net.encode(clips)
    assert features.shape == (2, 64) and torch.isfinite(features).all()
    with safe_open(str(WEIGHTS_DIR / "tiny-synth-videomamba.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["preset"] == "tiny-synth-videomamba" and float(meta["test_accuracy"]) > 10
