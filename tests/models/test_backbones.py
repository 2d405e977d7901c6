"""Backbones: timm by name, the tiny CNN, and clear errors for unknown names and offline pretrained weights."""

from __future__ import annotations

import pytest
import torch

from tailsweep.models.backbones import TinyCNN, build_backbone, default_input_size


def test_timm_backbone_by_name_gives_pooled_features() -> None:
    backbone = build_backbone("resnet18")
    features = backbone(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, backbone.num_features)


@pytest.mark.parametrize("pool_grid", [1, 4])
def test_tiny_cnn_feature_width_follows_the_pool_grid(pool_grid: int) -> None:
    backbone = TinyCNN(width=4, num_stages=2, pool_grid=pool_grid, norm="group")
    assert backbone(torch.randn(3, 3, 16, 16)).shape == (3, 8 * pool_grid**2) == (3, backbone.num_features)


def test_unknown_backbone_lists_similar_names() -> None:
    with pytest.raises(ValueError, match=r"timm does not know backbone 'resnet_does_not_exist'.*Similar names: \["):
        build_backbone("resnet_does_not_exist")


def test_bad_tiny_cnn_options_are_named() -> None:
    with pytest.raises(ValueError, match="norm must be one of"):
        TinyCNN(norm="layer")
    with pytest.raises(ValueError, match="tiny_cnn has no pretrained weights"):
        build_backbone("tiny_cnn", pretrained=True)


def test_pretrained_weights_offline_fail_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    message = r"could not fetch pretrained weights for 'resnet18'.*model.pretrained=false"
    with pytest.raises(RuntimeError, match=message):
        build_backbone("resnet18", pretrained=True)


def test_fixed_size_timm_models_run_at_the_datas_image_size() -> None:
    """A ViT's pretrained configuration fixes 224x224; it gets timm's dynamic size and padding instead."""
    backbone = build_backbone("vit_tiny_patch16_224")
    assert backbone(torch.randn(2, 3, 28, 28)).shape == (2, backbone.num_features)
    assert default_input_size("vit_tiny_patch16_224") == 224
    assert default_input_size("tiny_cnn") is None and default_input_size({"_target_": "x.Net"}) is None


def test_tiny_cnn_options_given_to_timm_are_named() -> None:
    with pytest.raises(ValueError, match=r"timm model 'resnet18' does not take model.backbone_kwargs \{'width': 24\}"):
        build_backbone("resnet18", width=24)
    with pytest.raises(ValueError, match=r"tiny_cnn takes backbone_kwargs \('width'"):
        build_backbone("tiny_cnn", drop_rate=0.1)
