"""Configs: variants, overrides with clear errors, YAML files."""

import pytest

from fastinst.config import ConfigError, apply_overrides, from_dict, get_config, load_yaml, to_dict


def test_published_values():
    c = get_config("fastinst-d3-r50vd-dcn")
    assert c.model.deform_stages == (False, False, True, True) and c.model.dec_layers == 3
    assert (c.input.min_size_test, c.input.max_size_test) == (640, 853)
    assert c.solver.max_iter == 368750 and c.solver.steps == (327778, 355092)
    d1 = get_config("fastinst-d1-r50")
    assert (d1.input.min_size_test, d1.input.max_size_test) == (576, 777)


def test_overrides_and_errors():
    c = apply_overrides(
        get_config("fastinst-demo"), ["solver.max_iter=10", "solver.steps=[5, 8]", "solver.base_lr=1e-3"]
    )
    assert c.solver.base_lr == 1e-3
    assert c.solver.max_iter == 10 and c.solver.steps == (5, 8)
    assert apply_overrides(c, ["input.min_size_train=(160, 192)"]).input.min_size_train == (160, 192)
    with pytest.raises(ConfigError, match=r"solver\.max_itr.*did you mean solver\.max_iter"):
        apply_overrides(c, ["solver.max_itr=3"])
    with pytest.raises(ConfigError, match=r"solver\.max_iter must be an integer"):
        apply_overrides(c, ["solver.max_iter=abc"])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides(c, ["nonsense"])
    with pytest.raises(ConfigError, match="unknown model"):
        get_config("fastinst-d9")


def test_yaml_and_dict_roundtrip(tmp_path):
    p = tmp_path / "my.yaml"
    p.write_text("base: fastinst-d1-r50\nsolver:\n  base_lr: 0.0002\nmodel:\n  num_classes: 3\n")
    c = load_yaml(p)
    assert c.solver.base_lr == 2e-4 and c.model.num_classes == 3 and c.model.depth == 50
    assert to_dict(from_dict(to_dict(c))) == to_dict(c)
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  nope: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*solver\.nope"):
        load_yaml(bad)


def test_shipped_yaml_configs_match_the_registry():
    from pathlib import Path

    from fastinst.config import VARIANTS

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in VARIANTS:
        c = load_yaml(root / f"{name}.yaml")
        assert to_dict(c) == to_dict(get_config(name))
