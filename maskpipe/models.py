"""timm model factory: architecture + new classifier head, pretrained or local weights.

Pretrained weights come from, in order: a local weights file (``model.weights=PATH``), the
Hugging Face cache (``HF_HOME``), a download through timm. When none of these can work the
factory fails within seconds with :class:`WeightsUnavailableError` instead of letting the hub
client retry for a minute.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from maskpipe.errors import WeightsUnavailableError

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def create_model(
    arch: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    drop_rate: float = 0.0,
) -> torch.nn.Module:
    """Build ``arch`` with a ``num_classes`` head.

    Args:
        arch: any timm architecture name (``timm.list_models()``), optionally with a tag.
        num_classes: size of the new classifier head.
        pretrained: start from timm's ImageNet weights (HF cache first, then a download).
        weights: local weights file (.safetensors, .pth, .bin); wins over ``pretrained``.
            A classifier head of another shape is dropped (the new head stays random).
        drop_rate: dropout before the classifier.

    Raises:
        WeightsUnavailableError: weights can be neither found locally nor downloaded, or the
            weights file does not fit the architecture.
        ValueError: ``arch`` is not a timm architecture.
    """
    import timm

    _check_arch(arch)
    if weights:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
        load_weights_file(model, weights)
        return model
    if not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    return _create_pretrained(arch, num_classes, drop_rate)


def _check_arch(arch: str) -> None:
    import timm

    if not timm.is_model(arch.split(".")[0]):
        raise ValueError(f"unknown timm architecture {arch!r}; see timm.list_models()")


def _create_pretrained(arch: str, num_classes: int, drop_rate: float) -> torch.nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(arch)
    except RuntimeError as exc:
        raise WeightsUnavailableError(f"{arch}: {exc}. {_options(arch)}") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsUnavailableError(f"timm has no pretrained weights for {arch!r}. {_options(arch)}")

    cached = _cached_hub_file(cfg.hf_hub_id, cfg.hf_hub_filename)
    if cached is not None:
        log.info("pretrained weights for %s from the Hugging Face cache: %s", arch, cached)
        # Point timm at the cached file so it never touches the network; timm still applies
        # its own key filtering and replaces the 1000-class head.
        overlay = {"file": str(cached), "source": "file"}
        return timm.create_model(
            arch,
            pretrained=True,
            num_classes=num_classes,
            drop_rate=drop_rate,
            pretrained_cfg_overlay=overlay,
        )

    if _hub_offline():
        raise WeightsUnavailableError(
            f"pretrained weights for {arch!r} are not in the Hugging Face cache and HF_HUB_OFFLINE "
            f"is set. {_options(arch)}"
        )
    host, port = _weights_host(cfg.hf_hub_id, cfg.url)
    if not _reachable(host, port, HUB_PROBE_TIMEOUT_S):
        raise WeightsUnavailableError(
            f"cannot download pretrained weights for {arch!r}: {host}:{port} is unreachable "
            f"(no answer within {HUB_PROBE_TIMEOUT_S:.0f} s). {_options(arch)}"
        )
    try:
        return timm.create_model(arch, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
    except Exception as exc:  # the hub client raises many unrelated types
        raise WeightsUnavailableError(
            f"downloading pretrained weights for {arch!r} failed: {type(exc).__name__}: {exc}. "
            f"{_options(arch)}"
        ) from exc


def _options(arch: str) -> str:
    return (
        "Options: (1) a local weights file: --set model.weights=/path/to/"
        f"{arch}.safetensors; (2) a pre-filled Hugging Face cache: set HF_HOME to a folder that "
        f"holds timm/{arch} (fill it where the hub is reachable); (3) train from scratch: "
        "--set model.pretrained=false."
    )


def _cached_hub_file(hub_id: str | None, filename: str | None) -> Path | None:
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = hub_id.partition("@")
    for name in (filename,) if filename else _HUB_FILENAMES:
        found = try_to_load_from_cache(repo_id, name, revision=revision or None)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _weights_host(hub_id: str | None, url: str | None) -> tuple[str, int]:
    if hub_id:
        from huggingface_hub import constants

        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    else:
        endpoint = url or ""
    parsed = urlparse(endpoint)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    return parsed.hostname or "huggingface.co", port


def _reachable(host: str, port: int, timeout: float) -> bool:
    """TCP connect within ``timeout`` seconds, DNS included (it can hang on its own)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def recalibrate_batchnorm(model: torch.nn.Module, inputs: torch.Tensor) -> torch.nn.Module:
    """Re-estimate every BatchNorm's running statistics from one forward pass of ``inputs``
    (a plain average, not a moving one), then put the model in eval mode.

    Untrained weights with fresh statistics (mean 0, variance 1) give nearly the same output
    for every image; statistics measured on noise give varied predictions, which benchmarks
    and tests comparing answers across code paths need to mean anything.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(inputs)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# local weights files


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {path} does not exist; give an existing .safetensors/.pth file in "
            "model.weights, or set model.weights=null"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}"
        ) from None
    # Training checkpoints often nest the weights one level down.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights_file(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local state dict into ``model``; a classifier head of another shape is dropped."""
    state = read_state_dict(path)
    own = model.state_dict()
    head_prefixes = _classifier_prefixes(model)
    dropped = []
    for key in list(state):
        if key in own and own[key].shape != state[key].shape:
            if not key.startswith(head_prefixes):
                raise WeightsUnavailableError(
                    f"weights file {path} does not fit {type(model).__name__}: {key} has shape "
                    f"{tuple(state[key].shape)}, the model expects {tuple(own[key].shape)}"
                )
            dropped.append(state.pop(key))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_prefixes)]
    if missing or result.unexpected_keys:
        raise WeightsUnavailableError(
            f"weights file {path} does not match the architecture: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:3]}); was it saved from another model.arch?"
        )
    log.info(
        "loaded weights from %s%s", path, " (classifier head replaced)" if dropped else ""
    )


def _classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("classifier") or ("fc", "classifier", "head")
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{name}." for name in names)
