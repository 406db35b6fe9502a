"""create_model: heads, local weights files, the Hugging Face cache, fast offline failure."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

from maskpipe.errors import WeightsUnavailableError
from maskpipe.models import create_model


def test_create_model_has_the_requested_head():
    model = create_model("resnet10t", 3)
    assert model(torch.zeros(2, 3, 96, 72)).shape == (2, 3)


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="unknown timm architecture"):
        create_model("resnet_does_not_exist", 3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads_backbone_and_replaces_the_head(tmp_path, suffix):
    source = create_model("resnet10t", 1000)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    model = create_model("resnet10t", 3, weights=str(path))
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
    assert model.fc.out_features == 3


def test_weights_file_of_another_arch_is_a_clear_error(tmp_path):
    path = tmp_path / "r10.safetensors"
    save_file(create_model("resnet10t", 3).state_dict(), str(path))
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        create_model("resnet14t", 3, weights=str(path))


def test_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_model("resnet10t", 3, weights=str(tmp_path / "nope.safetensors"))


def test_offline_pretrained_fails_fast_with_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    # A closed loopback port: the hub is unreachable, as in an air-gapped cluster.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("efficientnet_b0", 3, pretrained=True)
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "model.weights" in message and "HF_HOME" in message and "model.pretrained=false" in message


def test_hf_hub_offline_fails_immediately(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        create_model("resnet10t", 3, pretrained=True)
    assert time.monotonic() - start < 5


def test_pretrained_weights_come_from_a_prefilled_hf_cache_without_network(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snapshot = hub / "models--timm--resnet10t.c3_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (hub / "models--timm--resnet10t.c3_in1k" / "refs").mkdir()
    (hub / "models--timm--resnet10t.c3_in1k" / "refs" / "main").write_text("0123abcd")
    source = create_model("resnet10t", 1000)
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = create_model("resnet10t", 3, pretrained=True)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
    assert model.fc.out_features == 3


def test_recalibrate_batchnorm_takes_the_plain_statistics_of_the_inputs_and_leaves_eval_mode():
    import torch

    from maskpipe.models import recalibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    model[0].running_mean.fill_(5.0)
    inputs = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert recalibrate_batchnorm(model, inputs) is model and not model.training
    torch.testing.assert_close(model[0].running_mean, inputs.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model[0].running_var, inputs.var(dim=(0, 2, 3)))
