import pytest

from pipeline.config import BuildConfig, ConfigError, MixConfig, config_to_dict, load_config, parse_set


def test_defaults_match_dfew_protocol():
    cfg = load_config(BuildConfig)
    assert cfg.decode.num_frames == 16 and cfg.align.frame_size == 112
    assert cfg.align.detector == "retinaface" and cfg.write.format == "both"
    assert load_config(MixConfig).alpha == 0.8


def test_yaml_then_cli_precedence(tmp_path):
    y = tmp_path / "b.yaml"
    y.write_text("decode:\n  num_frames: 8\nalign:\n  frame_size: 224\n")
    cfg = load_config(BuildConfig, y, {"decode.num_frames": 4, "align.detector": None})
    assert cfg.decode.num_frames == 4  # CLI wins over YAML
    assert cfg.align.frame_size == 224  # YAML wins over defaults
    assert cfg.align.detector == "retinaface"  # None = not given


def test_unknown_key_is_an_error(tmp_path):
    y = tmp_path / "b.yaml"
    y.write_text("decode:\n  num_frame: 8\n")
    with pytest.raises(ConfigError, match=r"unknown config key decode\.num_frame.*num_frames"):
        load_config(BuildConfig, y)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("decode.num_frames", "16", r"decode\.num_frames='16' has the wrong type"),
        ("decode.num_frames", 0, r"decode\.num_frames=0 is out of range"),
        ("align.frame_size", 4096, r"align\.frame_size=4096 is out of range"),
        ("align.detector", "yunet", r"align\.detector='yunet' is not allowed.*retinaface"),
        ("write.format", "zip", r"write\.format='zip'"),
        ("write.overwrite", 1, r"write\.overwrite=1 has the wrong type"),
    ],
)
def test_bad_values_name_field_value_and_allowed(key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(BuildConfig, None, {key: value})


def test_mix_config_validation():
    with pytest.raises(ConfigError, match="alpha"):
        load_config(MixConfig, None, {"alpha": 0.0})
    with pytest.raises(ConfigError, match="copies"):
        load_config(MixConfig, None, {"copies": 0})


def test_parse_set_yaml_scalars():
    assert parse_set(["align.detect_every=4", "write.format=parquet", "index.classes=[a, b]"]) == {
        "align.detect_every": 4, "write.format": "parquet", "index.classes": ["a", "b"]}
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_set(["nonsense"])


def test_config_round_trips_through_dict():
    cfg = load_config(BuildConfig, None, {"align.frame_size": 224})
    again = load_config(BuildConfig, None, {})
    d = config_to_dict(cfg)
    assert d["align"]["frame_size"] == 224 and isinstance(d["index"]["classes"], list)
    assert cfg.output_config() != again.output_config()


def test_shipped_yaml_configs_load():
    from pathlib import Path

    from pipeline.config import TrainConfig

    configs = Path(__file__).resolve().parents[1] / "configs"  # shipped as pipeline/configs, found by name too
    assert load_config(BuildConfig, configs / "build/dfew.yaml").align.frame_size == 112
    assert load_config(MixConfig, configs / "mix/dfew.yaml").copies == 2
    t = load_config(TrainConfig, configs / "train/dfew.yaml", {"epochs": 3})
    assert t.epochs == 3 and t.alpha == 0.8 and TrainConfig(folds="1-5").fold_list() == [1, 2, 3, 4, 5]


def test_a_stored_config_without_a_later_field_reads_as_the_old_behaviour():
    from pipeline.config import with_added_fields

    stored = config_to_dict(load_config(BuildConfig))
    del stored["align"]["roi_size"]  # a build made before tracking
    old = with_added_fields(stored)
    assert old["align"]["roi_size"] == 0 and "roi_size" not in stored["align"]  # the input is left alone
    now = config_to_dict(load_config(BuildConfig))
    assert with_added_fields(now) == now  # a field that is there is kept
    with pytest.raises(ConfigError, match=r"align\.roi_size=8 is out of range"):
        load_config(BuildConfig, None, {"align.roi_size": 8})
