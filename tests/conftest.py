"""Shared fixtures: small generated datasets in tmp directories and composed Hydra configs (all offline)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tailsweep.data.generators.counting import CountingConfig, generate_counting
from tailsweep.utils.paths import config_dir, register_resolvers

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
register_resolvers()

SMALL_COUNTING = CountingConfig(num_images=320, num_classes=30, image_size=24, group_size=8, seed=3)


@pytest.fixture(autouse=True)
def _restore_torch_determinism():
    """Each test starts with torch's deterministic-algorithms flag as the session had it: a run with
    ``trainer.deterministic=true`` (the debug configs) turns it on for the whole process, and torchmetrics then
    counts with dense N x K comparisons (its ``_bincount``), which made a later binned-metric test take 24 GB."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    """Each test starts without a process-wide ``HydraConfig``: a test that sets one (an in-process run) would
    otherwise hand its choices (``loss=rps``) to a later test that composes without Hydra's runtime."""
    from hydra.core.hydra_config import HydraConfig

    yield
    HydraConfig.instance().cfg = None  # type: ignore[assignment]


@pytest.fixture(scope="session")
def counting_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small counting set (320 images of 24x24 in groups of 8) shared by the session; its parent is a data dir."""
    data_dir = tmp_path_factory.mktemp("data")
    generate_counting(data_dir / "counting", SMALL_COUNTING)
    return data_dir / "counting"


ComposeFn = Callable[..., DictConfig]


@pytest.fixture
def compose_train(counting_root: Path, tmp_path: Path) -> ComposeFn:
    """Compose ``train.yaml`` (or ``eval.yaml``) with test-sized overrides, as Hydra would for a run."""

    def _compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        base = [
            f"paths.data_dir={counting_root.parent}",
            f"paths.log_dir={tmp_path / 'logs'}",
            "data.image_size=24",
            "data.batch_size=32",
            "trainer.max_epochs=1",
            "trainer.enable_model_summary=false",
            "trainer.enable_progress_bar=false",
        ]
        if config_name == "train":
            base.append("callbacks.rich_progress_bar=null")
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name, overrides=[*base, *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        Path(cfg.hydra.runtime.output_dir).mkdir(parents=True, exist_ok=True)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
