"""The optimizer and the learning-rate schedule of a training run, from ``config.train``.

AdamW, SGD and timm's AdamP come from :func:`timm.optim.create_optimizer_v2`, with every
hyperparameter spelled out (its ``adamp`` defaults differ: ``wd_ratio=0.01``, ``nesterov=True``)
and without its bias/norm weight-decay filter, so they are the optimizers the recipe names.
``adamp`` stays the ``adamp`` package's AdamP, the original recipe's. Schedules stay torch's
``lr_scheduler`` classes: timm's schedulers step by epoch or update count through another API
and save another state, which ``state/last.pt`` would have to follow.
"""

from __future__ import annotations

import logging
import math

import torch

from maskpipe.config import Config

log = logging.getLogger(__name__)


def scaled_lr(config: Config, world_size: int) -> float:
    """The learning rate of a world of ``world_size`` processes: ``train.lr`` (one process's)
    scaled as ``train.lr_scaling`` says with the effective batch (see :func:`effective_batch`)."""
    t = config.train
    factor = {"linear": world_size, "sqrt": math.sqrt(world_size), "none": 1}[t.lr_scaling]
    return t.lr * factor if world_size > 1 else t.lr


def effective_batch(config: Config, world_size: int) -> int:
    """Images per optimizer step: ``batch_size x world_size x grad_accum``."""
    return config.train.batch_size * world_size * config.train.grad_accum


def make_optimizer(model: torch.nn.Module, config: Config, lr: float | None = None) -> torch.optim.Optimizer:
    """``train.optimizer`` over every parameter of ``model``, with ``lr`` (default ``train.lr``)
    and ``train.weight_decay``."""
    t = config.train
    lr = t.lr if lr is None else lr
    if t.optimizer == "adamp":
        from adamp import AdamP

        return AdamP(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=t.weight_decay)
    options = {
        "timm_adamp": ("adamp", {"betas": (0.9, 0.999), "wd_ratio": 0.1, "nesterov": False}),
        "adamw": ("adamw", {}),
        "sgd": ("sgd", {"momentum": 0.9, "nesterov": True}),
    }
    if t.optimizer not in options:
        raise ValueError(f"unknown optimizer {t.optimizer!r}")
    from timm.optim import create_optimizer_v2

    name, extra = options[t.optimizer]
    return create_optimizer_v2(
        model, name, lr=lr, weight_decay=t.weight_decay, filter_bias_and_bn=False, **extra
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int, lr: float | None = None
) -> torch.optim.lr_scheduler.LRScheduler:
    """Every schedule steps once per optimizer step (so grad accumulation is accounted for);
    ``lr`` (default ``train.lr``) is one-cycle's peak."""
    from torch.optim import lr_scheduler

    t = config.train
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(t.warmup_epochs * steps_per_epoch)))
    if t.scheduler == "step":
        # StepLR of the original, stepped per epoch there; the same curve in optimizer steps.
        return lr_scheduler.StepLR(optimizer, step_size=t.step_size * steps_per_epoch, gamma=t.gamma)
    if t.scheduler == "onecycle":
        up_steps = warmup if warmup else 0.3 * total
        if up_steps <= 1:
            # OneCycleLR divides by (pct_start * total - 1): zero (ZeroDivisionError) or a
            # one-step ramp. A run this short gets the nearest well-defined curve instead.
            log.info("onecycle needs more than %d optimizer steps to warm up; using cosine", total)
            return lr_scheduler.LambdaLR(optimizer, _CosineWithWarmup(warmup, total))
        return lr_scheduler.OneCycleLR(optimizer, max_lr=t.lr if lr is None else lr, total_steps=total, pct_start=up_steps / total)
    if t.scheduler == "cosine":
        return lr_scheduler.LambdaLR(optimizer, _CosineWithWarmup(warmup, total))
    if t.scheduler == "constant":
        return lr_scheduler.LambdaLR(optimizer, _CosineWithWarmup(warmup, 0))
    raise ValueError(f"unknown scheduler {t.scheduler!r}")


class _CosineWithWarmup:
    """Linear warmup over ``warmup`` steps, then cosine to zero at ``total`` (0: constant)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.total <= 0:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
