"""The continual-learning loop end to end on a small synthetic stream."""

import json

import numpy as np
import pytest
import torch
import yaml
from interrupt import StopAt

import promptcl
from promptcl import metrics
from promptcl.config import build_config
from promptcl.engine.progress import Console
from promptcl.engine.trainer import Trainer
from promptcl.errors import ConfigError


def test_simplecil_end_to_end_writes_run_directory(tiny_run):
    result = promptcl.run(tiny_run({"name": "simplecil"}), quiet=True)
    A = result.accuracy
    assert A.shape == (3, 3)
    assert np.isnan(A[1, 0]) and np.isnan(A[2, 1]) and not np.isnan(A[:, 2]).any()
    assert result.metrics["faa"] == pytest.approx(metrics.faa(A))
    run_dir = result.run_dir
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["method"]["name"] == "simplecil"
    csv = (run_dir / "accuracy_matrix.csv").read_text().splitlines()
    assert csv[0] == "task,after_task_0,after_task_1,after_task_2" and len(csv) == 4
    assert json.loads((run_dir / "metrics.json").read_text())["faa"] == pytest.approx(
        result.metrics["faa"]
    )
    # 12 classes of 4 per task: chance is 1/12 at the end; prototypes on a random ViT do better.
    assert result.metrics["faa"] > 100 / 12


def test_accuracy_matrix_is_recomputable_from_stored_predictions(tiny_run):
    from safetensors.torch import load_file

    from promptcl.engine.evaluate import task_accuracies

    result = promptcl.run(tiny_run({"name": "simplecil"}), quiet=True)
    stored = load_file(str(result.run_dir / "predictions" / "after_task_1.safetensors"))
    assert task_accuracies(stored["predictions"], stored["targets"], [4, 8]) == pytest.approx(
        result.accuracy[:2, 1].tolist()
    )


def test_same_seed_same_metrics_other_seed_other_order(tiny_run, tmp_path):
    a = promptcl.run(tiny_run({"name": "linear_probe", "epochs": 1, "batch_size": 16}), quiet=True)
    b = promptcl.run(
        tiny_run(
            {"name": "linear_probe", "epochs": 1, "batch_size": 16},
            output={"dir": str(tmp_path / "b")},
        ),
        quiet=True,
    )
    c = promptcl.run(
        tiny_run(
            {"name": "linear_probe", "epochs": 1, "batch_size": 16},
            seed=1,
            output={"dir": str(tmp_path / "c")},
        ),
        quiet=True,
    )
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    assert a.class_order != c.class_order


def test_joint_beats_finetune_which_forgets(tiny_run, tmp_path):
    method = {"epochs": 4, "batch_size": 16, "lr": 1e-3}
    ft = promptcl.run(tiny_run({"name": "finetune", **method}), quiet=True)
    joint = promptcl.run(
        tiny_run({"name": "joint", **method}, output={"dir": str(tmp_path / "j")}), quiet=True
    )
    assert ft.metrics["fm"] > 10  # the lower bound forgets
    assert joint.metrics["faa"] >= ft.metrics["faa"] + 10


def test_linear_probe_leaves_backbone_unchanged(tiny_run):
    from promptcl.config import build_config
    from promptcl.engine.progress import Console
    from promptcl.engine.trainer import Trainer

    trainer = Trainer(
        build_config(tiny_run({"name": "linear_probe", "epochs": 1, "batch_size": 16})),
        Console(quiet=True),
    )
    before = {k: v.clone() for k, v in trainer.method.backbone.state_dict().items()}
    head = trainer.method.head.weight.clone()
    trainer.run()
    after = trainer.method.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head, trainer.method.head.weight)


def test_existing_run_directory_is_not_overwritten(tiny_run):
    promptcl.run(tiny_run({"name": "simplecil"}), quiet=True)
    with pytest.raises(ConfigError, match="--resume"):
        promptcl.run(tiny_run({"name": "simplecil"}), quiet=True)


@pytest.mark.parametrize("train_backbone", [True, False])
def test_head_lr_gives_the_head_its_own_rate(train_backbone):
    from promptcl.config import BackboneConfig, method_config
    from promptcl.registry import backbones, methods

    backbone = backbones.get("tiny-vit")(BackboneConfig(name="tiny-vit"))
    config = method_config(
        {"name": "finetune", "lr": 1e-4, "head_lr": 1e-2, "train_backbone": train_backbone}
    )
    method = methods.get("finetune")(config, backbone, [str(c) for c in range(5)])
    groups = method.param_groups()
    head = [g for g in groups if g["params"][0] is method.head.weight]
    assert len(head) == 1 and head[0]["lr"] == 1e-2
    trained = sum(p.numel() for g in groups for p in g["params"])
    expected = sum(p.numel() for p in method.parameters() if p.requires_grad)
    assert trained == expected and len(groups) == (2 if train_backbone else 1)
    assert all("lr" not in g for g in groups if g is not head[0])  # the rest take method.lr


def test_every_task_logs_where_its_time_went(tiny_run, capsys):
    result = promptcl.run(tiny_run({"name": "linear_probe", "epochs": 2, "batch_size": 16}))
    records = [json.loads(x) for x in (result.run_dir / "log.jsonl").read_text().splitlines()]
    times = [r for r in records if "seconds" in r and "epoch" not in r]
    assert [r["task"] for r in times] == [0, 1, 2]
    for r in times:
        spent = r["seconds"]
        assert set(spent) == {"train", "evaluate", "end_task", "checkpoint"}
        assert spent["train"] > 0 and spent["evaluate"] > 0 and spent["checkpoint"] > 0
        epochs = [e["seconds"] for e in records if e.get("epoch") is not None and e["task"] == r["task"]]  # fmt: skip
        assert len(epochs) == 2 and sum(epochs) <= spent["train"] + 1e-3
    assert "time: " in capsys.readouterr().err


def test_validation_is_evaluated_like_the_test_set_reported_beside_it_and_resumed(
    tiny_run, tmp_path
):
    method = {"name": "finetune", "epochs": 2, "batch_size": 8, "lr": 1e-3}
    cfg = tiny_run(method, data={"val_fraction": 0.25}, output={"dir": str(tmp_path / "ref")})
    reference = promptcl.run(cfg, quiet=True)
    saved = json.loads((reference.run_dir / "metrics.json").read_text())
    assert saved["validation"]["faa"] == pytest.approx(reference.validation["faa"])
    assert reference.validation["faa"] != reference.metrics["faa"]  # 24 vs 80 samples per task
    matrix = np.genfromtxt(reference.run_dir / "val_accuracy_matrix.csv", delimiter=",")[1:, 1:]
    assert np.nanmean(matrix[:, -1]) == pytest.approx(reference.validation["faa"], abs=1e-3)
    assert 100 / 12 * 2 < reference.validation["faa"] <= 100  # it learned: above twice chance
    stopped = tiny_run(method, data={"val_fraction": 0.25}, output={"dir": str(tmp_path / "cut")})
    with pytest.raises(KeyboardInterrupt):
        Trainer(build_config(stopped), StopAt(2, "train", 1)).run()
    resumed = Trainer(build_config(stopped), Console(quiet=True)).run(resume=True)
    assert resumed.validation == reference.validation
    np.testing.assert_array_equal(resumed.accuracy, reference.accuracy)
