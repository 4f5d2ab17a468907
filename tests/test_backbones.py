"""Prompted backbones against their unmodified timm / open_clip models; presets and weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from promptcl.backbones import zoo  # noqa: F401  (registers the presets)
from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.backbones.clip import PromptedCLIP
from promptcl.backbones.vit import PromptedViT
from promptcl.config import BackboneConfig
from promptcl.errors import ConfigError, UnsupportedBackboneError, WeightsError
from promptcl.registry import backbones

TINY = ["tiny-vit", "tiny-clip"]


def build(name: str, seed: int = 0, **cfg) -> Backbone:
    torch.manual_seed(seed)
    return backbones.get(name)(BackboneConfig(name=name, **cfg))


@pytest.fixture(scope="module")
def tiny() -> dict[str, Backbone]:
    return {name: build(name) for name in TINY}


@pytest.fixture
def images() -> Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # pixels in [0, 1]


def block_input(backbone: Backbone, layer: int, x: Tensor, prompts: LayerPrompts) -> Tensor:
    """The token sequence entering block ``layer`` (captured at its first norm)."""
    if isinstance(backbone, PromptedViT):
        norm = backbone.model.blocks[layer].norm1
    else:
        norm = backbone.model.visual.transformer.resblocks[layer].ln_1
    seen: list[Tensor] = []
    handle = norm.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    try:
        backbone(x, prompts)
    finally:
        handle.remove()
    return seen[0]


# ---- equality with the unmodified models -----------------------------------------------------


@torch.no_grad()
def test_vit_without_prompts_is_timm(tiny, images):
    vit = tiny["tiny-vit"]
    tokens = vit(images)
    assert tokens.shape == (3, 1 + 16, vit.embed_dim)
    ref = vit.model.forward_features(vit.normalize(images))
    torch.testing.assert_close(tokens, ref, atol=1e-5, rtol=0)
    ref = vit.model.forward_head(ref, pre_logits=True)
    torch.testing.assert_close(vit.pool(tokens), ref, atol=1e-5, rtol=0)
    assert vit.pool(tokens).shape == (3, vit.feature_dim)


@torch.no_grad()
def test_clip_image_without_prompts_is_open_clip(tiny, images):
    clip = tiny["tiny-clip"]
    features = clip.encode(images)
    assert features.shape == (3, clip.feature_dim)
    ref = clip.model.encode_image(clip.normalize(images))
    torch.testing.assert_close(features, ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_clip_text_without_prompts_is_open_clip(tiny):
    clip = tiny["tiny-clip"]
    text = clip.tokenize(["a photo of a cat", "a dog", "an aeroplane in the sky"])
    assert text.shape == (3, clip.context_length)
    torch.testing.assert_close(
        clip.encode_text(text), clip.model.encode_text(text), atol=1e-5, rtol=0
    )


# ---- the prompt kinds ------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_empty_prefix_changes_nothing_and_a_prefix_changes_the_output(tiny, images, name):
    net, D = tiny[name], tiny[name].embed_dim
    plain = net(images)
    empty = torch.zeros(3, 0, D)
    assert torch.equal(net(images, LayerPrompts(prefix={0: (empty, empty)})), plain)
    prefix = (torch.randn(3, 4, D), torch.randn(3, 4, D))
    out = net(images, LayerPrompts(prefix={1: prefix}))
    assert out.shape == plain.shape  # prefix-tuning keeps the sequence length
    assert (out - plain).abs().max() > 1e-3


@torch.no_grad()
def test_prefix_acts_in_key_value_space(tiny, images):
    """A prefix made of the projected keys/values of extra tokens T equals attending to T.

    After block 0, the original tokens must come out the same whether T is inserted as prompt
    tokens or given as prefix keys/values W_k LN(T), W_v LN(T) (attention ignores order).
    """
    vit = tiny["tiny-vit"]
    D, blk = vit.embed_dim, vit.model.blocks[0]
    T = torch.randn(3, 5, D)
    _, k, v = blk.attn.qkv(blk.norm1(T)).split(D, dim=-1)  # (B, 5, D) each
    with_tokens = block_input(vit, 1, images, LayerPrompts(tokens={0: T}))
    with_prefix = block_input(vit, 1, images, LayerPrompts(prefix={0: (k, v)}))
    kept = torch.cat([with_tokens[:, :1], with_tokens[:, 1 + 5 :]], dim=1)
    torch.testing.assert_close(with_prefix, kept, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("layer", [0, 1])
@torch.no_grad()
def test_prompt_tokens_follow_the_class_token(tiny, images, name, layer):
    net, D, L = tiny[name], tiny[name].embed_dim, 3
    prompts = torch.randn(3, L, D)
    plain_in = block_input(net, layer, images, LayerPrompts())
    seq = block_input(net, layer, images, LayerPrompts(tokens={layer: prompts}))
    assert seq.shape[1] == plain_in.shape[1] + L
    assert torch.equal(seq[:, 0], plain_in[:, 0])  # class token first
    assert torch.equal(seq[:, 1 : 1 + L], prompts)  # then the prompts
    assert torch.equal(seq[:, 1 + L :], plain_in[:, 1:])  # then the patches
    assert net(images, LayerPrompts(tokens={layer: prompts})).shape[1] == plain_in.shape[1] + L


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_residual_prompt(tiny, images, name):
    net, D = tiny[name], tiny[name].embed_dim
    plain = net(images)
    assert torch.equal(net(images, LayerPrompts(residual={0: torch.zeros(3, D)})), plain)
    out = net(images, LayerPrompts(residual={0: torch.randn(3, D)}))
    assert out.shape == plain.shape and (out - plain).abs().max() > 1e-3
    per_token = net(images, LayerPrompts(residual={1: torch.randn(3, plain.shape[1], D)}))
    assert (per_token - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", TINY)
def test_prompts_on_a_missing_layer_raise(tiny, images, name):
    net, D = tiny[name], tiny[name].embed_dim
    with pytest.raises(ValueError, match=r"layers \[2\]"):
        net(images, LayerPrompts(residual={net.depth: torch.zeros(3, D)}))


# ---- CoOp context: text tokens at layer 0 --------------------------------------------------


@torch.no_grad()
def test_context_is_inserted_after_start_of_text(tiny):
    """Context = the embeddings of "a photo of" must give the features of "a photo of cat"."""
    clip = tiny["tiny-clip"]
    words = clip.tokenize(["a photo of"])[0]
    n = int(words.argmax()) - 1  # tokens between start and end of text
    context = clip.model.token_embedding(words[1 : 1 + n])  # (M, D_text)
    names = clip.tokenize(["cat", "sports car"])
    full = clip.model.encode_text(clip.tokenize(["a photo of cat", "a photo of sports car"]))
    out = clip.encode_text(names, LayerPrompts(tokens={0: context}))
    torch.testing.assert_close(out, full, atol=1e-5, rtol=0)
    per_class = torch.stack([context, torch.randn_like(context)])  # (C, M, D_text)
    out = clip.encode_text(names, LayerPrompts(tokens={0: per_class}))
    torch.testing.assert_close(out[0], full[0], atol=1e-5, rtol=0)
    assert (out[1] - full[1]).abs().max() > 1e-3


def test_context_changes_text_features_and_gets_gradients(tiny):
    clip = tiny["tiny-clip"]
    text = clip.tokenize(["cat", "dog"])
    context = nn.Parameter(0.02 * torch.randn(4, clip.text_width))
    out = clip.encode_text(text, LayerPrompts(tokens={0: context}))
    assert out.shape == (2, clip.feature_dim)
    assert (out - clip.encode_text(text)).abs().max() > 1e-3
    out.pow(2).sum().backward()
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())


def test_context_that_would_cut_the_end_of_text_raises(tiny):
    clip = tiny["tiny-clip"]
    text = clip.tokenize([" ".join(["cat"] * (clip.context_length - 4))])
    with pytest.raises(ValueError, match="context_length"):
        clip.encode_text(text, LayerPrompts(tokens={0: torch.zeros(4, clip.text_width)}))


# ---- frozen ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_only_prompts_train(tiny, images, name):
    net, D = tiny[name], tiny[name].embed_dim
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prompts = nn.ParameterDict(
        {
            "tok": nn.Parameter(0.02 * torch.randn(1, 2, D)),
            "pk": nn.Parameter(0.02 * torch.randn(1, 3, D)),
            "pv": nn.Parameter(0.02 * torch.randn(1, 3, D)),
            "res": nn.Parameter(0.02 * torch.randn(1, D)),
        }
    )
    initial = {k: p.detach().clone() for k, p in prompts.items()}
    optimizer = torch.optim.Adam(prompts.parameters(), lr=1e-2)
    net.train()
    for _ in range(3):
        p = LayerPrompts(
            tokens={0: prompts["tok"].expand(3, -1, -1)},
            prefix={1: (prompts["pk"].expand(3, -1, -1), prompts["pv"].expand(3, -1, -1))},
            residual={1: prompts["res"].expand(3, -1)},
        )
        loss = net.encode(images, p).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    assert all(not torch.equal(initial[k], prompts[k]) for k in initial)


@pytest.mark.parametrize("name", TINY)
def test_frozen_backbone_stays_in_eval_mode(tiny, name):
    net = tiny[name]
    net.train()
    assert net.frozen and not any(m.training for m in net.modules())


def test_unsupported_timm_variant_raises():
    from timm.models.vision_transformer import ResPostBlock, VisionTransformer

    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, block_fn=ResPostBlock
    )
    with pytest.raises(UnsupportedBackboneError, match="ResPostBlock"):
        PromptedViT(model)


# ---- presets and weights ---------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_local_weights_are_loaded(tiny, images, tmp_path, name):
    source = tiny[name]
    path = tmp_path / ("weights.safetensors" if name == "tiny-vit" else "weights.pt")
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    save_file(state, path) if path.suffix == ".safetensors" else torch.save(state, path)
    loaded = build(name, seed=1, weights=path)
    fresh = build(name, seed=1)
    with torch.no_grad():
        assert (fresh.encode(images) - source.encode(images)).abs().max() > 1e-3
        assert torch.equal(loaded.encode(images), source.encode(images))
    assert isinstance(loaded, PromptedCLIP if name == "tiny-clip" else PromptedViT)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "vit.safetensors"
    with pytest.raises(WeightsError, match=str(missing)):
        build("vit-b16-sup21k", weights=missing)


def test_weights_with_pretrained_false_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="backbone.weights"):
        build("tiny-vit", pretrained=False, weights=tmp_path / "w.safetensors")


@pytest.mark.parametrize("name", ["clip-vit-b16", "vit-b16-sup21k"])
def test_hub_weights_offline_raise_a_weights_error(monkeypatch, tmp_path, name):
    import huggingface_hub.constants as hf

    # huggingface_hub reads HF_HUB_OFFLINE at import time, so patch the constant too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))  # no cached copy either
    with pytest.raises(WeightsError, match="backbone.weights") as info:
        build(name)
    assert "huggingface.co/" in str(info.value) and "pretrained: false" in str(info.value)
