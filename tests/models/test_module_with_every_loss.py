"""Every loss config plugs into the LightningModule: head width, probabilities, correction and metrics all fit."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses.registry import loss_config_tasks
from tailsweep.models.module import TailClassifier
from tailsweep.utils.paths import config_dir

LOSS_DIR = Path(config_dir()) / "loss"
MULTICLASS = {"ce", "focal", "logit_adjusted", "balanced_softmax", "ldam"}
ORDINAL = MULTICLASS | {"rps", "emd", "ev_l1", "ev_l2", "ce_ev_l1", "cdw_ce", "sord", "unimodal", "coral", "corn",
                        "clm", "group_sum"}
MULTILABEL = {"bce", "sigmoid_focal", "asl", "cb_bce"}
SOFT = {"soft_ce", "soft_kl"}
#: every library loss config (peer/ ones: tests/losses/test_peers.py) -> the task and C it is tried with
WIDTH = {"ordinal": 6, "multilabel": 5, "soft": 3}
CASES = [(name, task, WIDTH[task]) for name, tasks in sorted(loss_config_tasks(LOSS_DIR).items())
         if not name.startswith("peer/") for task in ["ordinal" if "ordinal" in tasks else sorted(tasks)[0]]]


def test_the_issue_names_every_loss_config() -> None:
    assert {p.stem for p in LOSS_DIR.glob("*.yaml")} >= ORDINAL | MULTILABEL | SOFT


def _statistics(task: str, c: int) -> tuple[DatasetStatistics, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    groups = torch.arange(64) // 8
    if task == "multilabel":
        target = (torch.rand(64, c, generator=generator) < 0.1).float()
        target[0, 0] = -1.0
        return DatasetStatistics.from_multilabel_targets(target, group_ids=groups), target
    if task == "soft":
        target = torch.softmax(torch.randn(64, c, generator=generator) * 2, -1)
        return DatasetStatistics.from_soft_targets(target, group_ids=groups), target
    target = torch.cat([torch.arange(c), torch.randint(0, c, (64 - c,), generator=generator)])
    return DatasetStatistics.from_labels(target, c, task=task, group_ids=groups), target


def _module(name: str, task: str, c: int, **kwargs: object) -> tuple[TailClassifier, torch.Tensor]:
    statistics, target = _statistics(task, c)
    loss = instantiate(OmegaConf.load(LOSS_DIR / f"{name}.yaml"))
    module = TailClassifier("tiny_cnn", loss, statistics, partial(torch.optim.SGD, lr=0.1),
                            backbone_kwargs={"width": 4, "num_stages": 2}, **kwargs)
    return module, target


def test_the_cases_cover_every_named_config_with_its_task() -> None:
    tasks = {name: task for name, task, _ in CASES}
    assert {name for name in tasks if tasks[name] == "ordinal"} >= ORDINAL
    assert {name for name in tasks if tasks[name] == "multilabel"} == MULTILABEL
    assert {name for name in tasks if tasks[name] == "soft"} == SOFT


@pytest.mark.parametrize(("name", "task", "c"), CASES)
def test_loss_trains_and_scores_through_the_module(name: str, task: str, c: int) -> None:
    torch.manual_seed(0)
    module, target = _module(name, task, c)
    batch = {"image": torch.randn(64, 3, 16, 16), "target": target, "group_id": torch.arange(64) // 8}
    outputs = module(batch["image"])
    assert outputs.shape[0] == 64
    loss = module.loss(outputs, batch["target"], group_id=batch["group_id"])
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in module.parameters())
    module.eval()
    with torch.no_grad():
        step = module._evaluate(batch, "val")
    probabilities = step["probabilities"]
    assert probabilities.shape == (64, c) and (probabilities >= 0).all()
    if task != "multilabel":
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(64), atol=1e-4, rtol=0)
    values = module.val_metrics.compute()
    assert values and all(torch.isfinite(v).all() for v in values.values())


@pytest.mark.parametrize(("name", "task"), [("corn", "multilabel"), ("bce", "ordinal"), ("soft_ce", "multiclass"),
                                            ("ev_l1", "soft")])
def test_a_loss_that_does_not_fit_the_task_fails_listing_what_it_supports(name: str, task: str) -> None:
    with pytest.raises(ValueError, match=r"does not fit task .* it supports"):
        _module(name, task, 4)


def test_class_weighted_ce_reports_raw_and_corrected_metrics() -> None:
    statistics, _ = _statistics("ordinal", 6)
    loss = instantiate(OmegaConf.load(LOSS_DIR / "ce.yaml"), class_weights="inverse")
    module = TailClassifier("tiny_cnn", loss, statistics, partial(torch.optim.SGD, lr=0.1),
                            backbone_kwargs={"width": 4, "num_stages": 2})
    assert module.report_raw and module.val_raw_metrics is not None
    assert all(key.startswith("val/raw/") for key in module.val_raw_metrics.keys())  # noqa: SIM118 (prefixed)
