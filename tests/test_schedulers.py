"""make_scheduler: every schedule runs for any run length, however short."""

from __future__ import annotations

import math

import pytest
import torch

from maskpipe.config import load_config
from maskpipe.train import make_scheduler


def _lrs(scheduler_name: str, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0) -> list[float]:
    config = load_config(
        "smoke",
        [f"train.scheduler={scheduler_name}", f"train.epochs={epochs}", f"train.warmup_epochs={warmup_epochs}"],
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.train.lr)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("epochs, steps", [(1, 1), (1, 2), (1, 3), (3, 1), (2, 1)])
def test_onecycle_runs_with_three_or_fewer_optimizer_steps(epochs, steps):
    # OneCycleLR itself raises ZeroDivisionError here (pct_start * total_steps <= 1).
    lrs = _lrs("onecycle", epochs, steps)
    assert len(lrs) == epochs * steps
    assert all(math.isfinite(lr) and 0 <= lr <= 2.0e-3 + 1e-12 for lr in lrs)
    assert lrs[0] > 0


def test_onecycle_with_a_one_step_warmup_falls_back_too():
    lrs = _lrs("onecycle", epochs=5, steps_per_epoch=1, warmup_epochs=1)
    assert len(lrs) == 5 and all(math.isfinite(lr) for lr in lrs)


def test_onecycle_keeps_its_shape_on_longer_runs():
    lrs = _lrs("onecycle", epochs=2, steps_per_epoch=10)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 0 < peak < len(lrs) - 1  # warms up, then anneals
    assert lrs[0] < lrs[peak] and lrs[-1] < lrs[peak]
    assert lrs[peak] == pytest.approx(2.0e-3, rel=0.05)


@pytest.mark.parametrize("name", ["cosine", "constant", "step"])
def test_other_schedules_run_for_a_single_step(name):
    assert len(_lrs(name, 1, 1)) == 1
