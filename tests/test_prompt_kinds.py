"""The second-floor prompt kinds (value, hook), CLIP's prompted text tower, the declared prompt
kinds and the backbone's own input normalisation."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from promptcl.backbones import zoo  # noqa: F401  (registers the presets)
from promptcl.backbones.base import PROMPT_KINDS, Backbone, LayerPrompts
from promptcl.backbones.clip import PromptedCLIP
from promptcl.backbones.vit import PromptedViT
from promptcl.config import BackboneConfig
from promptcl.errors import UnsupportedPromptError
from promptcl.registry import backbones

TINY = ["tiny-vit", "tiny-clip"]
TEXTS = ["a photo of a cat", "a dog", "an aeroplane in the sky"]


@pytest.fixture(scope="module")
def tiny() -> dict[str, Backbone]:
    torch.manual_seed(0)
    return {name: backbones.get(name)(BackboneConfig(name=name, pretrained=False)) for name in TINY}


@pytest.fixture(scope="module")
def clip(tiny) -> PromptedCLIP:
    return tiny["tiny-clip"]


@pytest.fixture
def images() -> Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # pixels in [0, 1]


def out_proj(net: Backbone, layer: int) -> nn.Linear:
    """The attention output projection W_o of image block ``layer``."""
    if isinstance(net, PromptedViT):
        return net.model.blocks[layer].attn.proj
    return net.model.visual.transformer.resblocks[layer].attn.out_proj


def recorder(calls: list[tuple[int, Tensor]]):
    """A hook that records (layer, sequence) and returns the sequence unchanged."""

    def hook(i: int, x: Tensor) -> Tensor:
        calls.append((i, x))
        return x

    return hook


# ---- value -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("layer", [0, 1])
@torch.no_grad()
def test_value_equals_a_residual_of_the_projected_value(tiny, images, name, layer):
    """Attention rows sum to 1, so W_o softmax(qk^T)(v + r) = W_o softmax(qk^T) v + W_o r."""
    net, D = tiny[name], tiny[name].embed_dim
    r = torch.randn(3, D)
    out = net(images, LayerPrompts(value={layer: r}))
    assert (out - net(images)).abs().max() > 1e-3
    residual = r @ out_proj(net, layer).weight.T  # (B, D), no bias
    expected = net(images, LayerPrompts(residual={layer: residual}))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_value_acts_on_the_token_values_only(tiny, images, name):
    """With a prefix, a value r on the tokens plus r on the prefix values is a residual W_o r."""
    net, D = tiny[name], tiny[name].embed_dim
    r = torch.randn(3, D)
    pk, pv = torch.randn(3, 4, D), torch.randn(3, 4, D)
    out = net(images, LayerPrompts(prefix={1: (pk, pv + r[:, None])}, value={1: r}))
    residual = r @ out_proj(net, 1).weight.T
    expected = net(images, LayerPrompts(prefix={1: (pk, pv)}, residual={1: residual}))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_per_token_value(tiny, images, name):
    net, D = tiny[name], tiny[name].embed_dim
    plain = net(images)
    N = plain.shape[1]
    r = torch.randn(3, D)
    shared = net(images, LayerPrompts(value={0: r}))
    expanded = net(images, LayerPrompts(value={0: r[:, None].expand(-1, N, -1)}))
    torch.testing.assert_close(expanded, shared, atol=1e-6, rtol=0)
    out = net(images, LayerPrompts(value={0: torch.randn(3, N, D)}))
    assert out.shape == plain.shape and (out - plain).abs().max() > 1e-3
    # N counts the prompt tokens inserted at (or before) the layer
    tokens = {0: torch.randn(3, 2, D)}
    with_tokens = net(images, LayerPrompts(tokens=tokens, value={1: torch.randn(3, N + 2, D)}))
    assert (with_tokens - net(images, LayerPrompts(tokens=tokens))).abs().max() > 1e-3


# ---- hook ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_identity_hook_is_called_once_per_block_and_changes_nothing(tiny, images, name):
    net, D = tiny[name], tiny[name].embed_dim
    calls: list[tuple[int, Tensor]] = []
    assert torch.equal(net(images, LayerPrompts(hook=recorder(calls))), net(images))
    assert [i for i, _ in calls] == list(range(net.depth))
    N = net(images).shape[1]
    assert all(x.shape == (3, N, D) for _, x in calls)
    calls.clear()  # the hook sees the sequence after the tokens inserted at its layer
    net(images, LayerPrompts(tokens={1: torch.randn(3, 2, D)}, hook=recorder(calls)))
    assert [x.shape[1] for _, x in calls] == [N, N + 2]


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_hook_output_replaces_the_sequence(tiny, images, name):
    net, D = tiny[name], tiny[name].embed_dim
    shift = torch.randn(D)
    out = net(images, LayerPrompts(hook=lambda i, x: x + shift if i == 1 else x))
    assert (out - net(images)).abs().max() > 1e-3
    if isinstance(net, PromptedViT):  # by hand: the last block and norm of timm on x + shift
        calls: list[tuple[int, Tensor]] = []
        net(images, LayerPrompts(hook=recorder(calls)))
        m = net.model
        expected = m.norm(m.blocks[1](calls[1][1] + shift))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# ---- CLIP's text tower -----------------------------------------------------------------------


def text_out_proj(clip: PromptedCLIP, layer: int) -> nn.Linear:
    return clip.model.transformer.resblocks[layer].attn.out_proj


@torch.no_grad()
def test_empty_text_prompts_change_nothing(clip):
    text = clip.tokenize(TEXTS)
    plain = clip.encode_text(text)
    assert torch.equal(plain, clip.model.encode_text(text))  # open_clip's own transformer forward
    assert torch.equal(clip.encode_text(text, LayerPrompts()), plain)
    no_tokens = torch.zeros(0, clip.text_width)
    assert torch.equal(clip.encode_text(text, LayerPrompts(tokens={0: no_tokens})), plain)
    # Prompts inside the transformer run the blocks one by one: equal up to rounding.
    empty = torch.zeros(3, 0, clip.text_width)
    torch.testing.assert_close(
        clip.encode_text(text, LayerPrompts(prefix={0: (empty, empty)})), plain, atol=1e-5, rtol=0
    )


@torch.no_grad()
def test_identity_hook_on_the_text_tower(clip):
    text = clip.tokenize(TEXTS)
    calls: list[tuple[int, Tensor]] = []
    out = clip.encode_text(text, LayerPrompts(hook=recorder(calls)))
    assert [i for i, _ in calls] == list(range(clip.text_depth))
    assert all(x.shape == (3, clip.context_length, clip.text_width) for _, x in calls)
    zero = torch.zeros(3, clip.text_width)  # x + 0 == x: the same block-by-block forward
    assert torch.equal(out, clip.encode_text(text, LayerPrompts(residual={0: zero})))
    torch.testing.assert_close(out, clip.encode_text(text), atol=1e-5, rtol=0)
    shift = torch.randn(clip.text_width)  # not a constant: the layer norms would remove it
    shifted = clip.encode_text(text, LayerPrompts(hook=lambda i, x: x + shift if i == 1 else x))
    assert (shifted - out).abs().max() > 1e-3


@torch.no_grad()
def test_text_prefix_is_seen_by_every_position_and_tokens_stay_causal(clip):
    """Captured after text block 0: the prefix reaches the start-of-text position (a causal mask
    over the prefix would hide it), and a later word still does not reach earlier positions."""
    D = clip.text_width
    text = clip.tokenize(["a photo of a cat", "a photo of a dog"])  # differ at position 5
    prefix = (torch.randn(1, 4, D).expand(2, -1, -1), torch.randn(1, 4, D).expand(2, -1, -1))
    after_block_0 = {}

    def capture(key: str, prompts: LayerPrompts) -> None:
        calls: list[tuple[int, Tensor]] = []
        prompts.hook = recorder(calls)
        clip.encode_text(text, prompts)
        after_block_0[key] = calls[1][1]  # (C, L, D_text)

    capture("plain", LayerPrompts())
    capture("prefix", LayerPrompts(prefix={0: prefix}))
    plain, prefixed = after_block_0["plain"], after_block_0["prefix"]
    assert (prefixed[:, 0] - plain[:, 0]).abs().amax(dim=-1).min() > 1e-3  # 0 sees the prefix
    torch.testing.assert_close(prefixed[0, :5], prefixed[1, :5], atol=1e-6, rtol=0)
    assert (prefixed[0, 5:] - prefixed[1, 5:]).abs().max() > 1e-3
    out = clip.encode_text(text, LayerPrompts(prefix={1: prefix}))
    assert (out - clip.encode_text(text)).abs().max() > 1e-3


@pytest.mark.parametrize("layer", [0, 1])
@torch.no_grad()
def test_text_value_equals_a_residual_of_the_projected_value(clip, layer):
    text = clip.tokenize(TEXTS)
    r = torch.randn(3, clip.text_width)
    out = clip.encode_text(text, LayerPrompts(value={layer: r}))
    assert (out - clip.encode_text(text)).abs().max() > 1e-3
    residual = r @ text_out_proj(clip, layer).weight.T
    expected = clip.encode_text(text, LayerPrompts(residual={layer: residual}))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_deep_text_tokens_follow_start_of_text_and_move_the_pooling(clip):
    m, D, M = clip.model, clip.text_width, 3
    text = clip.tokenize(TEXTS)
    eot = text.argmax(dim=-1)  # (C,) end-of-text positions
    tokens = torch.randn(3, M, D)
    plain_calls: list[tuple[int, Tensor]] = []
    calls: list[tuple[int, Tensor]] = []
    clip.encode_text(text, LayerPrompts(hook=recorder(plain_calls)))
    final: list[Tensor] = []
    handle = m.ln_final.register_forward_hook(lambda _m, _in, out: final.append(out))
    try:
        out = clip.encode_text(text, LayerPrompts(tokens={1: tokens}, hook=recorder(calls)))
    finally:
        handle.remove()
    assert torch.equal(calls[0][1], plain_calls[0][1])  # block 0 is untouched
    seq, before = calls[1][1], plain_calls[1][1]  # entering block 1: (C, L, D_text)
    L = clip.context_length
    assert seq.shape == (3, L, D)
    assert torch.equal(seq[:, 0], before[:, 0])  # start of text
    assert torch.equal(seq[:, 1 : 1 + M], tokens)  # the prompts
    assert torch.equal(seq[:, 1 + M :], before[:, 1 : L - M])  # the text, its padding end cut
    pooled = final[0][torch.arange(3), eot + M]  # (C, D_text) at the moved end of text
    torch.testing.assert_close(out, pooled @ m.text_projection, atol=1e-6, rtol=0)
    assert (out - clip.encode_text(text)).abs().max() > 1e-3


def test_text_tokens_that_would_cut_the_end_of_text_raise(clip):
    text = clip.tokenize([" ".join(["cat"] * (clip.context_length - 6))])  # end of text at L - 5
    two = torch.zeros(2, clip.text_width)
    clip.encode_text(text, LayerPrompts(tokens={0: two, 1: two}))  # 4 tokens still fit
    with pytest.raises(ValueError, match="context_length"):
        clip.encode_text(text, LayerPrompts(tokens={0: two, 1: torch.zeros(3, clip.text_width)}))


def test_text_prompts_get_gradients(clip):
    text = clip.tokenize(TEXTS[:2])
    D = clip.text_width
    parts = nn.ParameterList(nn.Parameter(0.02 * torch.randn(*s)) for s in [(2, D), (2, 3, D)])
    prompts = LayerPrompts(
        tokens={1: parts[0]}, prefix={1: (parts[1], parts[1])}, value={0: parts[1][:, 0]}
    )
    clip.encode_text(text, prompts).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parts)
    assert all(p.grad is None for p in clip.parameters())


# ---- declared kinds --------------------------------------------------------------------------


class TokensOnlyViT(PromptedViT):
    prompt_kinds: ClassVar[frozenset[str]] = frozenset({"tokens"})


class PlainTextCLIP(PromptedCLIP):
    text_prompt_kinds: ClassVar[frozenset[str]] = frozenset({"tokens", "residual"})


def test_families_declare_their_kinds_and_inputs(tiny):
    vit, clip = tiny["tiny-vit"], tiny["tiny-clip"]
    assert PROMPT_KINDS == {"tokens", "prefix", "residual", "value", "hook"}
    assert vit.prompt_kinds == clip.prompt_kinds == clip.text_prompt_kinds == PROMPT_KINDS
    assert vit.modality == clip.modality == "image"
    assert not vit.supports_text and clip.supports_text


@torch.no_grad()
def test_an_unsupported_kind_raises(tiny, images):
    net = TokensOnlyViT(tiny["tiny-vit"].model)
    D = net.embed_dim
    net(images, LayerPrompts(tokens={0: torch.randn(3, 2, D)}, value={}))  # empty: not given
    with pytest.raises(UnsupportedPromptError, match=r"TokensOnlyViT .*'value'.*supports 'tokens'"):
        net(images, LayerPrompts(value={0: torch.zeros(3, D)}))
    with pytest.raises(ValueError, match="'hook'"):
        net(images, LayerPrompts(hook=lambda i, x: x))
    clip = PlainTextCLIP(tiny["tiny-clip"].model)
    text = clip.tokenize(TEXTS)
    prefix = (torch.zeros(3, 1, clip.text_width),) * 2
    clip.encode_text(text, LayerPrompts(residual={0: torch.zeros(3, clip.text_width)}))
    with pytest.raises(
        UnsupportedPromptError, match=r"text tower .*'prefix'.*'residual', 'tokens'"
    ):
        clip.encode_text(text, LayerPrompts(prefix={0: prefix}))
    clip(images, LayerPrompts(prefix={0: (torch.zeros(3, 1, clip.embed_dim),) * 2}))  # image: all


# ---- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_normalize_is_torchvision_normalize(tiny, name):
    net = tiny[name]
    reference = v2.Normalize(list(net.mean), list(net.std))
    g = torch.Generator().manual_seed(2)
    for shape in [(4, 3, 32, 32), (2, 5, 3, 32, 32)]:  # images, clips
        x = torch.rand(*shape, generator=g)
        assert torch.equal(net.normalize(x), reference(x))
    x = torch.rand(2, 5, 3, 48, 40, generator=g)  # another size: resized first
    resized = v2.Resize([32, 32], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)(x)
    assert torch.equal(net.normalize(x), reference(resized))
    with torch.no_grad():
        assert torch.equal(net(x[:, 0]), net(resized[:, 0]))
