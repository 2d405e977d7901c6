"""Messages that name the cause: the key, the expected and the actual value, the file (issue 17, item 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tailsweep.models.build import build_model
from tailsweep.train import train
from tailsweep.utils.checkpointing import check_checkpoint_fits
from tailsweep.utils.distributed import validate_trainer_config
from tailsweep.utils.resume import apply_training_config, config_origin
from tailsweep.utils.runtime import check_optimizer_numbers


def test_an_optimizer_number_that_is_text_is_named(compose_train) -> None:
    with pytest.raises(ValueError, match=r"model\.optimizer\.lr must be a finite real number, got 'abc' \(str\)"):
        train(compose_train(["model.optimizer.lr=abc"]))
    for bad in (True, float("nan"), [0.1]):
        with pytest.raises(ValueError, match=r"model\.optimizer\.weight_decay"):
            check_optimizer_numbers({"lr": 0.1, "weight_decay": bad})
    check_optimizer_numbers({"lr": 1, "weight_decay": 0.0, "betas": [0.9, 0.99]})


@pytest.mark.parametrize("epochs", [0, -2, 1.5, "3", True])
def test_max_epochs_that_trains_nothing_is_refused(epochs: object) -> None:
    with pytest.raises(ValueError, match=r"trainer\.max_epochs must be an integer >= 1 \(or -1 for no limit\), got"):
        validate_trainer_config({"max_epochs": epochs, "accelerator": "cpu"})
    validate_trainer_config({"max_epochs": 0, "fast_dev_run": True, "accelerator": "cpu"})


def test_a_head_that_does_not_fit_names_the_loss_and_num_classes(compose_train, tmp_path: Path) -> None:
    cfg = compose_train(["loss=rps"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    checkpoint = tmp_path / "rps.ckpt"
    torch.save({"state_dict": build_model(cfg, datamodule).state_dict()}, checkpoint)
    coral = compose_train(["loss=coral"])
    model = build_model(coral, datamodule)
    message = r"head\.\S+ has shape \(30,.*\) in the checkpoint but \(29,.*\) .* loss=\S*CORALLoss and num_classes=30"
    with pytest.raises(ValueError, match=message):
        check_checkpoint_fits(model, checkpoint, coral.loss._target_, 30)


def test_eval_names_the_overrides_it_cannot_apply_with_the_training_config() -> None:
    saved = OmegaConf.create({"data": {"image_size": 24, "eval_batch_size": 512}, "model": {"width": 8},
                              "loss": {"_target_": "Rps"}})
    cfg = OmegaConf.create({"data": {"image_size": 48, "eval_batch_size": 64}, "model": {"width": 8},
                            "loss": {"_target_": "Corn"}, "split": "val"})
    with pytest.raises(ValueError, match=r"cannot apply \['loss=corn', 'data.image_size=48'\]"):
        apply_training_config(cfg.copy(), saved, ["loss=corn", "data.image_size=48", "data.eval_batch_size=64",
                                                  "split=val"], "run/.hydra/config.yaml")
    applied = cfg.copy()
    applied.loss = saved.loss
    apply_training_config(applied, saved, ["data.eval_batch_size=64", "model.width=8", "split=val"], "x")
    assert applied.data == {"image_size": 24, "eval_batch_size": 64} and applied.loss == saved.loss


def test_a_run_config_from_another_version_names_key_class_and_file() -> None:
    cfg = OmegaConf.create({"data": {"_target_": "pathlib.PurePosixPath", "no_such_argument": 1}})
    message = r"data\.no_such_argument: pathlib\.PurePosixPath takes no argument .*old/run"
    with pytest.raises(ValueError, match=message), config_origin(cfg, "old/run/.hydra/config.yaml"):
        instantiate(cfg.data)
