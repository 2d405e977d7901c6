"""A trainer config this machine cannot run fails before any process is spawned, naming what is available."""

from __future__ import annotations

import pytest
import torch

from tailsweep.utils.distributed import validate_trainer_config


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_config_without_gpu_names_the_cpu_alternatives() -> None:
    with pytest.raises(ValueError, match=r"needs a CUDA GPU .* Use trainer=cpu, or trainer=ddp_cpu"):
        validate_trainer_config({"accelerator": "gpu", "devices": 2, "strategy": "ddp"})


def test_more_gpus_than_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"trainer.devices=4 asks for 4 GPUs but this machine has 2"):
        validate_trainer_config({"accelerator": "gpu", "devices": 4})
    validate_trainer_config({"accelerator": "gpu", "devices": [0, 1]})


def test_unknown_strategy_lists_lightnings_strategies() -> None:
    with pytest.raises(ValueError, match=r"trainer.strategy='dpp' is not a Lightning strategy; available: .*'ddp'"):
        validate_trainer_config({"accelerator": "cpu", "strategy": "dpp"})


def test_unknown_accelerator() -> None:
    with pytest.raises(ValueError, match=r"trainer.accelerator='npu' is unknown"):
        validate_trainer_config({"accelerator": "npu"})


def test_cpu_processes_are_fine() -> None:
    validate_trainer_config({"accelerator": "cpu", "devices": 2, "strategy": "ddp"})
