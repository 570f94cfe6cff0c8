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

    from fastinst.config import CONFIG_DIR, VARIANTS, config_file

    # the package's copy, which tools/write_configs.py writes into the source tree
    assert CONFIG_DIR == Path(__file__).resolve().parents[1] / "src" / "fastinst" / "configs"
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(VARIANTS)
    for name in VARIANTS:
        c = load_yaml(CONFIG_DIR / f"{name}.yaml")
        assert to_dict(c) == to_dict(get_config(name))
    assert config_file("fastinst-d1-r50") == CONFIG_DIR / "fastinst_R50_ppm-fpn_x1_576.yaml"


def test_yaml_names_that_are_not_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a shipped config's path from another layout names that variant
    assert get_config("configs/fastinst_R50_ppm-fpn_x3_640.yaml").name == "fastinst_R50_ppm-fpn_x3_640"
    with pytest.raises(ConfigError, match=r"^mine\.yaml: no such YAML config file$"):
        get_config("mine.yaml")
