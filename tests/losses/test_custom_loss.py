"""A loss from outside the package joins through config alone: a class anywhere on the import path plus a YAML in
the user's own config directory (``hydra.searchpath``), with no edit to tailsweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from tailsweep.losses.base import TailLoss
from tailsweep.tasks import ORDINAL_TASKS


class SquaredDistanceToTarget(TailLoss):
    """Mean squared distance between the expected class and the label: E_p[k] = sum_k k p_k, loss (E_p[k] - y)^2."""

    tasks: ClassVar[frozenset[str]] = ORDINAL_TASKS

    def forward(self, outputs: Tensor, target: Tensor, **_: Any) -> Tensor:
        probabilities = self.parametrization.probabilities(outputs)
        classes = torch.arange(probabilities.shape[1], device=outputs.device, dtype=probabilities.dtype)
        return ((probabilities @ classes - target.to(probabilities.dtype)) ** 2).mean()


def test_a_loss_from_a_user_config_directory_trains(compose_train, tmp_path: Path) -> None:
    from tailsweep.train import train

    user_configs = tmp_path / "my_configs"
    (user_configs / "loss").mkdir(parents=True)
    (user_configs / "loss" / "squared_distance.yaml").write_text(f"_target_: {__name__}.SquaredDistanceToTarget\n")
    cfg = compose_train(["debug=fast_dev_run", f"hydra.searchpath=[file://{user_configs}]", "loss=squared_distance"])
    assert cfg.loss._target_.endswith("SquaredDistanceToTarget")
    metrics = train(cfg)
    assert {"test/ev_mae", "test/rps"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())
