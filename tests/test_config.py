"""Config: YAML in, resolved YAML out; unknown keys are errors that suggest the closest key."""

from pathlib import Path

import pytest
import yaml

from promptcl.config import build_config, load_config
from promptcl.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_and_method_defaults():
    cfg = build_config({"method": {"name": "linear_probe"}})
    assert cfg.method.name == "linear_probe"
    assert cfg.method.lr == 1e-3 and cfg.method.train_backbone is False
    assert build_config({"method": {"name": "simplecil"}}).method.epochs == 0


def test_yaml_roundtrip_keeps_method_fields(tmp_path):
    cfg = build_config(
        {"seed": 3, "method": {"name": "finetune", "lr": 0.5}, "data": {"num_tasks": 5}}
    )
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(cfg.to_yaml())["method"]["train_backbone"] is True


def test_overrides_parse_values(tmp_path):
    cfg = load_config(
        None, ["method.name=finetune", "method.epochs=2", "data.task_sizes=[4, 2, 2]", "seed=7"]
    )
    assert cfg.method.epochs == 2 and cfg.data.task_sizes == [4, 2, 2] and cfg.seed == 7


@pytest.mark.parametrize(
    "raw, bad, suggestion",
    [
        ({"data": {"nme": "x"}}, "data.nme", "data.name"),
        ({"method": {"name": "finetune", "learning_rate": 0.1}}, "method.learning_rate", None),
        ({"method": {"name": "finetune", "epoch": 3}}, "method.epoch", "method.epochs"),
        ({"trian": {}}, "trian", "train"),
    ],
)
def test_unknown_key_is_named_with_closest_valid_key(raw, bad, suggestion):
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    message = str(err.value)
    assert f"unknown config key '{bad}'" in message
    if suggestion:
        assert f"did you mean '{suggestion}'" in message


def test_unknown_method_name_suggests():
    with pytest.raises(ConfigError, match="unknown method 'simplecl'.*'simplecil'"):
        build_config({"method": {"name": "simplecl"}})


def test_bad_value_names_the_field():
    with pytest.raises(ConfigError, match="method.epochs"):
        build_config({"method": {"name": "finetune", "epochs": -1}})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_config_extends_its_base_section_by_section(tmp_path):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump({"seed": 3, "method": {"name": "l2p", "lr": 0.5, "pool_size": 7}})
    )
    (tmp_path / "row.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "method": {"lr": 0.1}}))
    config = load_config(tmp_path / "row.yaml", ["method.top_k=3"])
    assert config.seed == 3
    assert (config.method.lr, config.method.pool_size, config.method.top_k) == (0.1, 7, 3)


def test_a_base_chain_that_loops_or_is_missing_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist"):
        load_config(tmp_path / "c.yaml")


def test_default_job_is_coda_prompt_as_in_its_shipped_config():
    default = load_config(None)
    assert default.method.name == "coda_prompt"
    assert (default.data.name, default.backbone.name) == ("synth-shapes-10", "tiny-synth-vit")
    assert default == load_config(CONFIGS / "coda_prompt_synth-shapes-10.yaml")


def test_overriding_the_default_method_starts_from_its_own_defaults():
    cfg = load_config(None, ["method.name=l2p", "method.epochs=2"])
    assert cfg.method.name == "l2p" and cfg.method.epochs == 2
    assert cfg.method.lr == build_config({"method": {"name": "l2p"}}).method.lr  # not CODA's 0.01
    kept = load_config(None, ["method.lr=0.5"])
    assert kept.method.name == "coda_prompt" and kept.method.num_components == 90


def test_a_config_without_a_method_is_an_error_not_a_silent_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: cifar100, root: /nowhere}\n")
    with pytest.raises(ConfigError, match="names no method.*default job"):
        load_config(path)
    with pytest.raises(ConfigError, match="names no method"):
        build_config({"seed": 1})


@pytest.mark.parametrize(
    "method",
    [
        {"name": "coda_prompt", "layers": [0, 5]},
        {"name": "dualprompt", "e_layers": [1, 1]},
        {"name": "hide_prompt", "prompt_layers": [-1]},
    ],
)
def test_prompt_layers_outside_the_backbone_are_named(tiny_run, method):
    import promptcl

    with pytest.raises(
        ConfigError, match=r"method\.\w+ .* distinct blocks of the backbone, 0\.\.1"
    ):
        promptcl.run(tiny_run(method), quiet=True)
