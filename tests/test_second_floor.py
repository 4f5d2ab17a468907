"""The contracts of the second floor: phases that resume exactly, auxiliary backbones, modalities,
declared capabilities, and the layering (nothing below the engine imports it)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupt import StopAt
from pydantic import Field
from synth_stream import synth_run
from torch import Tensor, nn
from torch.nn import functional as F

import promptcl
from promptcl.backbones.base import Backbone
from promptcl.config import AuxiliaryBackbone, BackboneConfig, build_config
from promptcl.data.base import Preprocessing
from promptcl.engine.progress import Console
from promptcl.engine.trainer import CHECKPOINT, Trainer
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Method, Optim, Phase
from promptcl.methods.finetune import HeadClassifier, HeadConfig
from promptcl.registry import Registry, methods

PACKAGE = Path(promptcl.__file__).parent

# HiDe-Prompt, short: 2 prompt epochs, 3 TII epochs, 2 alignment epochs per task.
HIDE = {"name": "hide_prompt", "epochs": 2, "batch_size": 16, "tii_epochs": 3, "crct_epochs": 2}


def final_state(run_dir: Path) -> dict[str, Tensor]:
    return torch.load(run_dir / CHECKPOINT, weights_only=True)["method"]


@pytest.fixture(scope="module")
def hide_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("hide") / "run"
    return promptcl.run(synth_run(HIDE, out), quiet=True), final_state(out)


@pytest.mark.parametrize(
    "phase, epoch",
    [("tii", 1), ("align-tii", 1), ("align-head", 0)],  # in a phase, and at a phase boundary
)
def test_a_run_killed_in_a_task_inference_phase_resumes_to_the_uninterrupted_result(
    hide_reference, tmp_path, phase, epoch
):
    reference, reference_state = hide_reference
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        Trainer(build_config(synth_run(HIDE, out)), StopAt(1, phase, epoch)).run()
    position = torch.load(out / CHECKPOINT, weights_only=True)["position"]
    assert position["task"] == 1 and position["phase"] > 0  # stopped after the prompts phase
    resumed = promptcl.resume(out, quiet=True)
    np.testing.assert_array_equal(resumed.accuracy, reference.accuracy)
    state = final_state(out)
    assert state.keys() == reference_state.keys()
    assert all(torch.equal(state[k], reference_state[k]) for k in state)


def test_every_phase_writes_its_epochs_to_the_log(hide_reference):
    import json

    reference, _ = hide_reference
    lines = [json.loads(x) for x in (reference.run_dir / "log.jsonl").read_text().splitlines()]
    lines = [r for r in lines if "epoch" in r]  # epochs, not the tasks' time records
    per_task = [[(r["phase"], r["epoch"]) for r in lines if r["task"] == t] for t in (0, 1)]
    assert per_task[0] == [("prompts", 0), ("prompts", 1), ("tii", 0), ("tii", 1), ("tii", 2)]
    assert per_task[1][5:] == [("align-tii", 0), ("align-tii", 1), ("align-head", 0), ("align-head", 1)]  # fmt: skip
    assert all(r["samples"] > 0 and np.isfinite(r["loss"]) for r in lines)


class PlainProbeConfig(HeadConfig):
    name: str = "plain_probe"
    train_backbone: bool = False


@methods.register("plain_probe")
class PlainProbe(HeadClassifier):
    """A linear probe with a second phase on the plain view of the task's data, which records
    the batches it is given."""

    Config = PlainProbeConfig

    def begin_task(self, task):
        super().begin_task(task)
        self.seen: dict[int, Tensor] = {}  # sample index -> input, of this task's plain phase

    def phases(self, task):
        def record(batch: Batch) -> dict[str, Tensor]:
            self.seen.update(zip(batch.index.tolist(), batch.x, strict=True))
            return self.training_step(batch)

        head = lambda: [{"params": list(self.head.parameters())}]  # noqa: E731
        plain = Phase("plain", 1, head, record, Optim(lr=0.0), data="plain", batch_size=7)
        return [*super().phases(task), plain]


def test_a_plain_phase_reads_the_task_data_through_the_test_transforms(tmp_path):
    method = {"name": "plain_probe", "epochs": 1, "batch_size": 8}
    config = build_config(synth_run(method, tmp_path / "r", augment=True, task_sizes=[3, 3]))
    trainer = Trainer(config, Console(quiet=True))
    trainer.run()
    view = trainer.scenario.train_eval_view(1)  # the last task's samples, test transforms
    expected = {int(index): x for x, _, index in (view[i] for i in range(len(view)))}
    assert trainer.method.seen.keys() == expected.keys()
    assert all(torch.equal(trainer.method.seen[k], expected[k]) for k in expected)


# -- auxiliary backbones ----------------------------------------------------------------------
class AuxProbeConfig(HeadConfig):
    name: str = "aux_probe"
    lr: float = 1e-2
    train_backbone: bool = False
    train_mask: bool = True
    query_backbone: AuxiliaryBackbone = Field(
        default_factory=lambda: BackboneConfig(name="tiny-clip"), description="frozen CLIP"
    )


@methods.register("aux_probe")
class AuxProbe(Method):
    """A linear head on [ViT feature; CLIP image feature]: a method with an auxiliary backbone."""

    Config = AuxProbeConfig
    auxiliary_backbones = ("query_backbone",)

    def __init__(self, config, backbone: Backbone, class_names, auxiliary):
        super().__init__(config, backbone, class_names, auxiliary)
        clip = self.auxiliary["query_backbone"]
        self.head = nn.Linear(backbone.feature_dim + clip.feature_dim, self.num_classes)

    def predict(self, x: Tensor) -> Tensor:
        clip = self.auxiliary["query_backbone"]
        return self.head(torch.cat([self.backbone.encode(x), clip.encode(x)], dim=1))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(self.mask_for_training(self.predict(batch.x)), batch.y)}


AUX = {"name": "aux_probe", "epochs": 2, "batch_size": 16}


def test_an_auxiliary_backbone_is_built_frozen_left_out_of_checkpoints_and_resumes(tmp_path):
    reference = promptcl.run(synth_run(AUX, tmp_path / "ref"), quiet=True)
    trainer = Trainer(build_config(synth_run(AUX, tmp_path / "killed")), StopAt(1, "train", 1))
    clip = trainer.method.auxiliary["query_backbone"]
    assert clip.supports_text and clip.frozen
    assert not any(p.requires_grad for p in clip.parameters())
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    saved = final_state(tmp_path / "killed")
    assert set(saved) == {"head.weight", "head.bias"}  # neither backbone is saved
    resumed = promptcl.resume(tmp_path / "killed", quiet=True)
    np.testing.assert_array_equal(resumed.accuracy, reference.accuracy)
    assert resumed.metrics["faa"] > 25  # 10 classes per task: chance is 10% at the end


def test_an_auxiliary_backbone_field_takes_a_preset_name_or_a_backbone_config():
    config = build_config({"method": {**AUX, "query_backbone": "tiny-synth-clip"}})
    assert config.method.query_backbone == BackboneConfig(name="tiny-synth-clip")
    with pytest.raises(ConfigError, match="query_backbone.colour"):
        build_config({"method": {**AUX, "query_backbone": {"name": "tiny-clip", "colour": 1}}})


# -- modalities and capabilities --------------------------------------------------------------
def test_a_clips_frames_get_the_same_crop_and_flip():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    clip = frame.expand(6, -1, -1, -1).clone()  # (T, C, H, W): six equal frames
    train = Preprocessing(16, crop_scale=(0.1, 0.3)).transforms("video").train
    crops = [train(clip) for _ in range(8)]
    assert all(c.shape == (6, 3, 16, 16) and c.dtype == torch.float32 for c in crops)
    assert all(torch.equal(c[t], c[0]) for c in crops for t in range(6))  # one crop per clip
    assert any(not torch.equal(c[0], crops[0][0]) for c in crops[1:])  # random across clips
    image = Preprocessing(16, crop_scale=(0.1, 0.3)).transforms("image").train
    assert image(frame).shape == (3, 16, 16)
    with pytest.raises(ValueError):  # a video pipeline refuses a single frame
        train(frame)


def test_a_video_dataset_with_an_image_backbone_is_refused_at_build_time(tmp_path):
    config = build_config(
        {
            "data": {"name": "synth-motion-5"},
            "backbone": {"name": "tiny-vit", "pretrained": False},
            "method": {"name": "simplecil"},
            "output": {"dir": str(tmp_path / "r")},
        }
    )
    with pytest.raises(ConfigError, match="yields videos, but backbone 'tiny-vit' takes images"):
        Trainer(config, Console(quiet=True))
    assert not (tmp_path / "r").exists()


def test_a_method_that_needs_text_refuses_a_backbone_without_a_text_tower(tmp_path):
    config = build_config(synth_run({"name": "clip_zeroshot"}, tmp_path / "r"))
    with pytest.raises(ConfigError, match="needs a backbone with a text tower"):
        Trainer(config, Console(quiet=True))


def test_capabilities_are_declared_on_the_classes():
    assert methods.get("clip_zeroshot").needs_text and not methods.get("l2p").needs_text
    assert build_config({"method": {"name": "l2p", "task_oracle_voting": True}}).method.task_oracle
    assert not build_config({"method": {"name": "coda_prompt"}}).method.task_oracle


# -- layering ---------------------------------------------------------------------------------
def test_nothing_under_methods_or_prompts_imports_the_engine():
    for folder in ("methods", "prompts", "backbones", "data"):
        for path in (PACKAGE / folder).glob("*.py"):
            found = re.findall(r"^\s*(?:from|import) promptcl(?:\.engine|\s+import\s+engine)", path.read_text(), re.M)  # fmt: skip
            assert not found, f"{path.relative_to(PACKAGE)} imports promptcl.engine"


def test_a_registry_finds_the_modules_of_its_package_without_a_list(tmp_path, monkeypatch):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text(
        "from tests_registry import REGISTRY\nREGISTRY.register('one')(object)\n"
    )
    (tmp_path / "tests_registry.py").write_text(
        "from promptcl.registry import Registry\nREGISTRY = Registry('thing', packages=('plugins',))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tests_registry

    assert isinstance(tests_registry.REGISTRY, Registry)
    assert tests_registry.REGISTRY.names() == ["one"]
