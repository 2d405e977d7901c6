"""Every config of every group composes with the primary configs (and instantiates where it is cheap)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tailsweep.utils.paths import config_dir

CONFIG_DIR = Path(config_dir())
# groups composed at the top level of train.yaml; each YAML in them must compose
GROUPS = ["data", "model", "loss", "trainer", "logger", "callbacks", "experiment", "debug", "hparams_search"]


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
    assert cfg.data.num_classes >= 2
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
