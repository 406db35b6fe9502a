"""Config: presets load and validate, overrides coerce types, errors list the valid choices."""

from __future__ import annotations

import pytest

from maskpipe.config import (
    PRESETS,
    ConfigError,
    apply_overrides,
    load_config,
    load_config_file,
    validate,
)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_validates(preset):
    config = load_config(preset)
    assert config.preset == preset
    validate(config)


def test_original_preset_is_the_competition_recipe():
    c = load_config("original")
    assert (c.model.arch, c.model.pretrained) == ("efficientnet_b4", True)
    assert (c.data.crop_size, c.data.input_size) == ([448, 336], [512, 384])
    assert c.data.augment == "original" and not c.data.use_val_split
    assert (c.train.optimizer, c.train.scheduler, c.train.gamma, c.train.grad_accum) == ("adamp", "step", 0.5, 2)
    assert c.train.sampler == {"mask": "weighted", "gender": "shuffle", "age": "weighted"}
    assert c.train.select_by == "train_acc"


def test_smoke_preset_is_cpu_sized():
    c = load_config("smoke")
    assert c.model.arch == "resnet10t" and not c.model.pretrained
    assert c.data.input_size == [96, 72]
    # Few people: the one-cycle schedule's last epoch is kept, not the best on a handful of
    # validation people.
    assert c.data.use_val_split and c.train.select_by == "last"


def test_selection_by_validation_needs_the_split():
    with pytest.raises(ConfigError, match="needs data.use_val_split=true"):
        load_config("smoke", ["train.select_by=val_f1", "data.use_val_split=false"])
    for select_by in ("last", "train_acc"):
        assert load_config("smoke", [f"train.select_by={select_by}"]).train.select_by == select_by


def test_overrides_are_typed():
    c = load_config("smoke", ["train.epochs=3", "model.arch=efficientnet_b0", "data.input_size=64x48",
                              "train.lr=1e-3", "model.weights=null", "data.augs=flip,noise"])  # fmt: skip
    assert c.train.epochs == 3 and c.model.arch == "efficientnet_b0"
    assert c.data.input_size == [64, 48] and c.train.lr == pytest.approx(1e-3)
    assert c.model.weights is None and c.data.augs == ["flip", "noise"]


def test_apply_overrides_leaves_the_original_untouched():
    base = load_config("smoke")
    changed = apply_overrides(base, ["train.epochs=1"])
    assert changed.train.epochs == 1 and base.train.epochs != 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("train.epochs=three", "expects int"),
        ("train.nonsense=1", "valid keys:"),
        ("train.optimizer=lion", "valid choices: adamp, timm_adamp"),
        ("data.augs=flip,spin", "valid choices: flip, affine"),
        ("model.arch=resnet_nope", "unknown model.arch"),
        ("epochs", "key=value"),
    ],
)
def test_bad_overrides_are_rejected_with_a_hint(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", [override])


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="valid presets: default, original, smoke"):
        load_config("fastest")


def test_saved_config_reads_back_equal(tmp_path):
    config = load_config("smoke", ["train.epochs=2"])
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert load_config_file(path) == config
