"""Every config of every group composes with the primary configs (and instantiates where it is cheap)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import nn

from tailsweep.data.stats import DatasetStatistics
from tailsweep.hints import data_hints
from tailsweep.utils.paths import config_dir

CONFIG_DIR = Path(config_dir())
# groups composed at the top level of train.yaml; each YAML in them must compose
GROUPS = ["data", "model", "loss", "calibration", "stage2", "trainer", "logger", "callbacks", "experiment", "debug",
          "hparams_search"]


def _options(group: str) -> list[str]:
    """Option names of a group, with those in subfolders as ``sub/name`` (``loss=peer/corn``)."""
    root = CONFIG_DIR / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in _options(g)], ids=lambda v: str(v)
)
def test_every_config_composes(group: str, option: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"], return_hydra_config=True)
    assert cfg.data.num_classes == "auto" or cfg.data.num_classes >= 2
    assert cfg.loss._target_.startswith(("tailsweep.losses.", "tailsweep.peers."))
    assert cfg.hydra.run.dir.endswith(tuple("0123456789"))  # logs/train/runs/<timestamp>
    GlobalHydra.instance().clear()


def test_eval_config_composes() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt_path=x.ckpt"])
    assert cfg.split == "test"
    GlobalHydra.instance().clear()


def test_unknown_config_value_lists_valid_ones() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"), pytest.raises(Exception) as error:
        compose("train", overrides=["trainer=does_not_exist"])
    assert "Available options" in str(error.value) and "cpu" in str(error.value)
    GlobalHydra.instance().clear()


def test_slurm_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.nodes == 2 and cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices
    GlobalHydra.instance().clear()


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def _build_model(cfg):
    statistics = DatasetStatistics.from_labels(torch.arange(30) % 5, 5, task="ordinal")
    return instantiate(cfg.model, loss=instantiate(cfg.loss), statistics=statistics)


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_config_builds_and_runs(option: str) -> None:
    model = _build_model(_compose([f"model={option}"]))
    assert model(torch.randn(2, 3, 28, 28)).shape[0] == 2


@pytest.mark.parametrize("backbone", ["resnet18", "vit_tiny_patch16_224"])
def test_any_timm_backbone_by_name_builds_at_small_image_sizes(backbone: str) -> None:
    """``model=timm model.backbone=resnet18`` failed with ``unexpected keyword argument 'width'`` (the tiny CNN's
    backbone_kwargs merged into timm's); a ViT runs on 28x28 images (padded to 16-pixel patches)."""
    cfg = _compose(["model=timm", f"model.backbone={backbone}", "data=manifest", "loss=corn"])
    assert dict(cfg.model.backbone_kwargs) == {}
    model = _build_model(cfg)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 4)  # CORN: C - 1 conditional logits
    assert data_hints(cfg)["hints"] == {"backbone": backbone, "input_size": 224, "loss_tasks": ["ordinal"],
                                        "loss": "CORNLoss"}


class OwnNet(nn.Module):
    """A user's own network: any module with ``num_features``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.num_features = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).mean((2, 3))


def test_own_network_plugs_in_as_a_target() -> None:
    cfg = _compose([f"model.backbone={{_target_:{__name__}.OwnNet,width:6}}"])
    model = _build_model(cfg)
    assert isinstance(model.backbone, OwnNet) and model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    # the data config no longer interpolates the backbone (which built the network inside data.normalization)
    assert cfg.data.normalization == "auto" and "backbone" not in data_hints(cfg).get("hints", {})
