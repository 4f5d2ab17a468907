"""Frame encoders: an image backbone run on clips (backbones/video.py)."""

import pytest
import torch

from promptcl.backbones.base import LayerPrompts
from promptcl.backbones.video import FrameEncoder, frame_grid, segment_centres
from promptcl.build import build_backbone, check_capabilities
from promptcl.config import BackboneConfig, RunConfig
from promptcl.errors import ConfigError


def encoder(kind: str, name: str = "tiny-vit", **kw) -> FrameEncoder:
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name=name, frame_encoder=kind, **kw))
    assert isinstance(backbone, FrameEncoder) and backbone.modality == "video"
    return backbone


def test_grid_tiles_land_on_patch_boundaries_in_time_order():
    # frame k is a flat image of value k / 10, so every tile names its frame
    frames = torch.arange(4.0).div(10).view(1, 4, 1, 1, 1).expand(1, 4, 3, 32, 32)
    grid = frame_grid(frames, grid=2, patch=8, fill=torch.full((3,), 0.5))
    for k in range(4):
        r, c = divmod(k, 2)  # row-major: time runs left to right, then down
        tile = grid[0, :, 16 * r : 16 * (r + 1), 16 * c : 16 * (c + 1)]
        torch.testing.assert_close(tile, torch.full_like(tile, k / 10))
    # g = 3 on 32 px with 8-px patches: 8-px tiles on the patch grid, the border is the fill
    frames9 = torch.arange(9.0).div(10).view(1, 9, 1, 1, 1).expand(1, 9, 3, 32, 32)
    grid9 = frame_grid(frames9, grid=3, patch=8, fill=torch.full((3,), 0.5))
    for k in range(9):
        r, c = divmod(k, 3)
        tile = grid9[0, :, 8 * r : 8 * (r + 1), 8 * c : 8 * (c + 1)]
        torch.testing.assert_close(tile, torch.full_like(tile, k / 10))
    assert (grid9[0, :, 24:, :] == 0.5).all() and (grid9[0, :, :, 24:] == 0.5).all()


def test_grid_views_pick_segment_centres():
    assert segment_centres(8, 4) == [1, 3, 5, 7]
    assert segment_centres(8, 2) == [2, 6]
    enc = encoder("frame-grid", spatial_frames=2, grid_size=2)
    clip = torch.arange(8.0).div(10).view(1, 8, 1, 1, 1).expand(2, 8, 3, 32, 32)
    views = enc.views(clip)  # (B, 3, C, H, W): frames 2 and 6, then the grid of 1, 3, 5, 7
    assert views.shape == (2, 3, 3, 32, 32)
    assert views[0, 0].unique().tolist() == pytest.approx([0.2])
    assert views[0, 1].unique().tolist() == pytest.approx([0.6])
    assert views[0, 2, 0, 0, 0].item() == pytest.approx(0.1)
    assert views[0, 2, 0, 31, 31].item() == pytest.approx(0.7)


def test_a_grid_finer_than_a_patch_is_refused():
    with pytest.raises(ConfigError, match="lower backbone.grid_size"):
        encoder("frame-grid", grid_size=5)  # 32 px / 5 < one 8-px patch per frame


@pytest.mark.parametrize("kind", ["frame-mean", "frame-max"])
def test_pooled_frames_equal_per_frame_forwards_with_each_samples_prompts(kind):
    enc = encoder(kind)
    image = enc.image
    torch.manual_seed(1)
    clip = torch.rand(2, 3, 3, 32, 32)
    key, value = torch.randn(2, 4, 64), torch.randn(2, 4, 64)  # one prefix per sample
    prompts = LayerPrompts(prefix={0: (key, value)}, tokens={1: torch.randn(2, 3, 64)})
    features = enc.encode(clip, prompts)
    for b in range(2):
        mine = LayerPrompts(
            prefix={0: (key[b : b + 1].expand(3, -1, -1), value[b : b + 1].expand(3, -1, -1))},
            tokens={1: prompts.tokens[1][b : b + 1].expand(3, -1, -1)},
        )
        per_frame = image.encode(clip[b], mine)  # (T, F)
        pooled = per_frame.amax(0) if kind == "frame-max" else per_frame.mean(0)
        torch.testing.assert_close(features[b], pooled, atol=1e-5, rtol=1e-5)


def test_frame_encoder_keeps_the_text_tower_of_a_clip():
    enc = encoder("frame-mean", name="tiny-clip")
    assert enc.supports_text
    text = enc.tokenize(["a red heart moving left"])
    torch.testing.assert_close(enc.encode_text(text), enc.image.encode_text(text))


def test_a_video_dataset_on_an_image_backbone_names_the_fix():
    config = RunConfig.model_validate(
        {
            "data": {"name": "synth-motion-5"},
            "backbone": {"name": "tiny-vit"},
            "method": {"name": "simplecil"},
        }
    )
    from promptcl.build import build_scenario, preprocessing

    image = build_backbone(config.backbone)
    scenario = build_scenario(config, preprocessing(image, config.data))
    with pytest.raises(ConfigError, match="backbone.frame_encoder"):
        check_capabilities(config, image, scenario)
    video = build_backbone(config.backbone.model_copy(update={"frame_encoder": "frame-grid"}))
    check_capabilities(config, video, scenario)
