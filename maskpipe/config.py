"""Typed configuration: dataclass defaults -> a YAML preset -> ``--set key=value`` overrides.

The resolved config is saved beside every checkpoint (``config.yaml``), so a checkpoint says
how it was made. Every value is validated before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from maskpipe.errors import MaskpipeError
from maskpipe.labels import TASKS

PRESETS: tuple[str, ...] = ("default", "original", "smoke")
AUG_NAMES: tuple[str, ...] = (
    "flip", "affine", "hue_sat_val", "brightness_contrast", "coarse_dropout", "cutout", "noise",
)  # fmt: skip


class ConfigError(MaskpipeError, ValueError):
    """A configuration value, key or preset is invalid. The message lists the valid choices."""


@dataclass
class ModelConfig:
    arch: str = "efficientnet_b4"
    pretrained: bool = True
    # Local weights file (.safetensors / .pth / .bin) used instead of a download.
    weights: str | None = None
    drop_rate: float = 0.0


@dataclass
class DataConfig:
    # (height, width). The deterministic crop taken from the 512x384 photo before resizing;
    # null keeps the whole photo.
    crop_size: list[int] | None = field(default_factory=lambda: [448, 336])
    # (height, width) fed to the model.
    input_size: list[int] = field(default_factory=lambda: [512, 384])
    mean: list[float] = field(default_factory=lambda: [0.548, 0.504, 0.479])
    std: list[float] = field(default_factory=lambda: [0.237, 0.247, 0.246])
    # "original": the competition's albumentations list on float images, decoded every access.
    # "fast": decode-once uint8 cache, the same random augmentations on uint8, normalise last.
    augment: str = "fast"
    # The random augmentations of the training list, by name (see docs/presets.md); the
    # original recipe uses all of them.
    augs: list[str] = field(default_factory=lambda: list(AUG_NAMES))
    # Training-time upper age boundary (official: 60; several teams trained with 58).
    age_old_min: int = 60
    # Hold out the index's `split == "val"` people (`maskpipe index --val-fraction`) and score
    # them every epoch; an index without them trains on every person (unless select_by=val_f1).
    use_val_split: bool = True
    # Memory budget of the decoded-image cache in GiB; 0 disables the cache.
    cache_gb: float = 8.0
    # DataLoader workers; null chooses from the CPU count.
    num_workers: int | None = None


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-5
    # "adamp" (the adamp package, as the original), "timm_adamp" (timm's maintained AdamP,
    # works with channels-last), "adamw".
    optimizer: str = "timm_adamp"
    # "step" (StepLR), "onecycle", "cosine".
    scheduler: str = "cosine"
    step_size: int = 5
    gamma: float = 0.5
    warmup_epochs: float = 0.0
    grad_accum: int = 1
    # Per task: "weighted" (WeightedRandomSampler, inverse class frequency) or "shuffle".
    sampler: dict[str, str] = field(
        default_factory=lambda: {"mask": "weighted", "gender": "shuffle", "age": "weighted"}
    )
    label_smoothing: float = 0.0
    # "val_f1": keep the epoch with the best validation macro-F1;
    # "train_acc": the original's choice, best training accuracy;
    # "last": the last epoch (a one-cycle schedule ends at its best fit; no validation needed,
    # so every person can train).
    select_by: str = "val_f1"
    # Stop after this many epochs without improvement; 0 disables.
    early_stopping_patience: int = 0
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True  # on CUDA; ignored on CPU unless forced
    seed: int = 42
    device: str = "auto"  # "auto", "cpu", "cuda"
    # Under torchrun the effective batch is batch_size x world size x grad_accum; the learning
    # rate follows it: "linear" (train.lr x world size), "sqrt" (x its square root) or "none".
    # train.lr is the rate of one process; one process trains with it unchanged.
    lr_scaling: str = "linear"
    # Under torchrun on GPUs: BatchNorm statistics over every rank's batch (SyncBatchNorm)
    # instead of each rank's own. Ignored by one process, and on the CPU (DDP runs it on GPUs only).
    sync_batchnorm: bool = False


@dataclass
class InferConfig:
    batch_size: int = 64
    tta: bool = False
    num_workers: int | None = None


@dataclass
class Config:
    preset: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# loading


def load_config(preset: str = "default", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the preset, then ``key=value`` overrides; validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    raw = yaml.safe_load(resources.files("maskpipe.configs").joinpath(f"{preset}.yaml").read_text())
    config = from_dict(raw or {}, source=f"preset {preset}")
    config.preset = preset
    config = apply_overrides(config, overrides)
    validate(config)
    return config


def load_config_file(path: str | Path) -> Config:
    """Read a saved ``config.yaml`` (as written beside a checkpoint)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    config = from_dict(raw or {}, source=str(path))
    validate(config)
    return config


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    config = Config()
    for key, value in flatten(raw):
        _set(config, key, value, source)
    return config


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    config = dataclasses.replace(config)  # shallow copy of the top level
    config = from_dict(config.to_dict())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        _set(config, key.strip(), value, "--set")
    return config


def flatten(raw: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"train": {"epochs": 3}}`` -> ``[("train.epochs", 3)]``; dict-valued fields stay whole."""
    items: list[tuple[str, Any]] = []
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full not in _DICT_FIELDS:
            items.extend(flatten(value, f"{full}."))
        else:
            items.append((full, value))
    return items


_DICT_FIELDS = {"train.sampler"}


def valid_keys() -> list[str]:
    keys = ["preset"]
    for section in dataclasses.fields(Config):
        if dataclasses.is_dataclass(section.default_factory):  # type: ignore[arg-type]
            for f in dataclasses.fields(section.default_factory):  # type: ignore[arg-type]
                keys.append(f"{section.name}.{f.name}")
    return keys


def _set(config: Config, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    target: Any = config
    for part in parts[:-1]:
        if not hasattr(target, part) or not dataclasses.is_dataclass(getattr(target, part)):
            raise ConfigError(_unknown_key(key, source))
        target = getattr(target, part)
    name = parts[-1]
    fields = {f.name: f for f in dataclasses.fields(target)}
    if name not in fields or dataclasses.is_dataclass(getattr(target, name)):
        raise ConfigError(_unknown_key(key, source))
    hint = typing.get_type_hints(type(target))[name]
    setattr(target, name, _coerce(value, hint, key, source))


def _unknown_key(key: str, source: str) -> str:
    return f"unknown config key {key!r} (from {source}); valid keys: {', '.join(valid_keys())}"


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    bad = ConfigError(
        f"config key {key!r} (from {source}) expects {_type_name(hint)}, got {value!r}"
    )
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string.
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.replace("x", ",").split(",") if v.strip()]
            try:
                value = [yaml.safe_load(v) for v in value]
            except yaml.YAMLError:
                raise bad from None
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, args[0], key, source) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, args[1], key, source) for k, v in value.items()}
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# ---------------------------------------------------------------------------------------------
# validation

OPTIMIZERS = ("adamp", "timm_adamp", "adamw", "sgd")
SCHEDULERS = ("step", "onecycle", "cosine", "constant")
SAMPLERS = ("weighted", "shuffle")
SELECT_BY = ("val_f1", "train_acc", "last")
AUGMENTS = ("original", "fast")
DEVICES = ("auto", "cpu", "cuda")
LR_SCALINGS = ("linear", "sqrt", "none")


def validate(config: Config) -> None:
    """Reject impossible values before any work starts."""
    m, d, t, i = config.model, config.data, config.train, config.infer
    _choice("train.optimizer", t.optimizer, OPTIMIZERS)
    _choice("train.scheduler", t.scheduler, SCHEDULERS)
    _choice("train.select_by", t.select_by, SELECT_BY)
    _choice("data.augment", d.augment, AUGMENTS)
    for name in d.augs:
        _choice("data.augs entry", name, AUG_NAMES)
    _choice("train.device", t.device, DEVICES)
    _choice("train.lr_scaling", t.lr_scaling, LR_SCALINGS)
    for task, sampler in t.sampler.items():
        _choice("train.sampler keys", task, TASKS)
        _choice(f"train.sampler.{task}", sampler, SAMPLERS)
    _positive("train.epochs", t.epochs)
    _positive("train.batch_size", t.batch_size)
    _positive("train.grad_accum", t.grad_accum)
    _positive("train.step_size", t.step_size)
    _positive("infer.batch_size", i.batch_size)
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if not 0 < t.gamma <= 1:
        raise ConfigError(f"train.gamma must be in (0, 1], got {t.gamma}")
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    if t.weight_decay < 0 or t.early_stopping_patience < 0 or t.warmup_epochs < 0:
        raise ConfigError("train.weight_decay, early_stopping_patience, warmup_epochs must be >= 0")
    if t.select_by == "val_f1" and not d.use_val_split:
        raise ConfigError(
            "train.select_by=val_f1 needs data.use_val_split=true (or use last or train_acc)"
        )
    for name, size in (("data.input_size", d.input_size), ("data.crop_size", d.crop_size)):
        if size is None and name == "data.crop_size":
            continue
        if len(size) != 2 or min(size) < 16:
            raise ConfigError(f"{name} must be [height, width], each >= 16, got {size}")
    if len(d.mean) != 3 or len(d.std) != 3 or min(d.std) <= 0:
        raise ConfigError("data.mean and data.std must be 3 numbers each, std > 0")
    if not 30 < d.age_old_min <= 100:
        raise ConfigError(f"data.age_old_min must be in 31..100, got {d.age_old_min}")
    if d.cache_gb < 0:
        raise ConfigError(f"data.cache_gb must be >= 0, got {d.cache_gb}")
    for name, workers in (("data.num_workers", d.num_workers), ("infer.num_workers", i.num_workers)):
        if workers is not None and workers < 0:
            raise ConfigError(f"{name} must be >= 0 or null, got {workers}")
    if not 0 <= m.drop_rate < 1:
        raise ConfigError(f"model.drop_rate must be in [0, 1), got {m.drop_rate}")
    check_arch(m.arch)


def check_arch(arch: str) -> None:
    import timm  # deferred: importing timm costs a second

    if arch not in timm.list_models():
        close = timm.list_models(f"*{arch.split('.')[0][:6]}*")[:15]
        hint = f" similar: {', '.join(close)}" if close else ""
        raise ConfigError(
            f"unknown model.arch {arch!r}; any timm architecture is valid (timm.list_models()),"
            f"{hint or ' e.g. efficientnet_b4, resnet10t, convnext_tiny'}"
        )


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} is {value!r}; valid choices: {', '.join(choices)}")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")
