"""The decoupled second stage (issue 19): tau-normalisation and classifier re-training after the main fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tailsweep.models.stage2 import DEFAULT_TAUS, linear_head, tau_normalized
from tailsweep.train import train
from tailsweep.utils.runtime import METRICS_FILE

LIMITS = ["trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=3",
          "trainer.limit_test_batches=3", "callbacks.plots=null", "seed=3", "model.backbone_kwargs.width=8",
          "trainer.deterministic=true"]


@settings(deadline=None, max_examples=30)
@given(rows=st.integers(2, 6), cols=st.integers(1, 5), tau=st.floats(0.0, 2.0), seed=st.integers(0, 10_000))
def test_tau_normalisation_divides_each_row_by_its_norm_to_the_power_tau(rows: int, cols: int, tau: float,
                                                                           seed: int) -> None:
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    got = tau_normalized(weight, tau)
    expected = torch.stack([row / torch.sqrt((row**2).sum()) ** tau for row in weight])
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)


def test_tau_zero_is_the_identity_and_tau_one_gives_unit_rows() -> None:
    weight = torch.randn(5, 7)
    assert torch.equal(tau_normalized(weight, 0.0), weight)
    assert torch.allclose(torch.linalg.vector_norm(tau_normalized(weight, 1.0), dim=1), torch.ones(5), atol=1e-6)
    assert DEFAULT_TAUS[0] == 0.0 and DEFAULT_TAUS[-1] == 2.0 and len(DEFAULT_TAUS) == 21


def test_tau_norm_refuses_a_head_that_is_not_linear(compose_train) -> None:
    from hydra.utils import instantiate

    from tailsweep.models.build import build_model

    cfg = compose_train(["loss=coral"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    with pytest.raises(ValueError, match=r"CORALLoss.s head is CoralHead .*stage2=crt"):
        linear_head(model)


def run_metrics(cfg) -> tuple[dict[str, float], dict]:
    train(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / METRICS_FILE).read_text())
    return record["metrics"], record


def test_tau_norm_at_tau_zero_tests_the_main_fits_model_again(compose_train) -> None:
    """With the grid [0] the second stage is the trained head: every test metric equals the main fit's (run
    through the whole path: choice on val, checkpoint, calibration, test)."""
    metrics, record = run_metrics(compose_train(["loss=ce", "stage2=tau_norm", "stage2.taus=[0.0]", *LIMITS]))
    assert record["stage2"] == "tau_norm" and metrics["stage2/tau"] == 0.0
    assert Path(record["stage2_checkpoint"]).name == "stage2_tau_norm.ckpt"
    keys = [k for k in metrics if k.startswith("test/")]
    assert len(keys) > 10
    differ = {k: (metrics[k], metrics[f"stage1/{k}"]) for k in keys
              if metrics[k] != pytest.approx(metrics[f"stage1/{k}"], rel=1e-5, abs=1e-7)}
    assert not differ


def test_tau_norm_picks_the_tau_with_the_best_val_monitor(compose_train) -> None:
    cfg = compose_train(["loss=ce", "stage2=tau_norm", "stage2.taus=[0.0,1.0,2.0]", *LIMITS])
    metrics, record = run_metrics(cfg)
    monitor = record["monitor"]
    assert metrics["stage2/tau"] in (0.0, 1.0, 2.0)
    assert metrics[f"stage2/{monitor}"] <= metrics[f"stage2/tau0/{monitor}"]  # min-mode monitor: never worse
    checkpoint = torch.load(record["stage2_checkpoint"], weights_only=False, map_location="cpu")
    stage1 = torch.load(record["best_checkpoint"], weights_only=False, map_location="cpu")
    expected = tau_normalized(stage1["state_dict"]["head.weight"], metrics["stage2/tau"])
    assert torch.allclose(checkpoint["state_dict"]["head.weight"], expected, atol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "corn"])
def test_crt_retrains_only_the_head(compose_train, loss: str) -> None:
    """cRT: the backbone (weights and batch-norm buffers) is byte-identical to the main fit's best checkpoint; the
    head is new and trained; any head (CORN's conditional tasks too)."""
    metrics, record = run_metrics(compose_train([f"loss={loss}", "stage2=crt", "stage2.epochs=2", *LIMITS]))
    assert record["stage2"] == "crt" and Path(record["stage2_checkpoint"]).name.startswith("stage2_crt_epoch_")
    stage1 = torch.load(record["best_checkpoint"], weights_only=False, map_location="cpu")["state_dict"]
    stage2 = torch.load(record["stage2_checkpoint"], weights_only=False, map_location="cpu")["state_dict"]
    backbone = [k for k in stage1 if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone), "the backbone has batch-norm buffers to keep"
    for key in backbone:
        assert torch.equal(stage1[key], stage2[key]), key
    assert not torch.equal(stage1["head.weight"], stage2["head.weight"])
    assert {"stage1/test/ev_mae", "test/ev_mae", "stage2/epochs"} <= set(metrics)
    assert (Path(cfg_output(record)) / "csv_stage2" / "metrics.csv").is_file()


def cfg_output(record: dict) -> Path:
    return Path(record["stage2_checkpoint"]).parent.parent


def test_crt_samples_class_balanced_and_draws_no_empty_class(compose_train) -> None:
    from tailsweep.models.stage2 import ClassifierRetraining

    cfg = compose_train(["loss=ce", "loss.class_weights=inverse", "callbacks=early_stopping"])
    stage = ClassifierRetraining(epochs=3).stage_config(cfg, torch.tensor([4.0, 2.0, 1.0]))
    assert stage.data.sampler.scheme == "inverse" and stage.trainer.max_epochs == 3
    assert stage.loss.class_weights == "none"  # balanced by the sampler, not twice
    assert ClassifierRetraining(class_weights=None).stage_config(cfg).loss.class_weights == "inverse"
    assert stage.callbacks.get("early_stopping") is None
    assert stage.callbacks.model_checkpoint.save_last is False
    empty = ClassifierRetraining().stage_config(cfg, torch.tensor([4.0, 0.0, 1.0]))
    assert empty.data.sampler.scheme == "explicit" and list(empty.data.sampler.explicit) == [0.25, 1.0, 1.0]
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        ClassifierRetraining(epochs=0)


def test_the_tau_norm_checkpoint_keeps_the_epoch_its_weights_were_trained_in(compose_train) -> None:
    """The best epoch of the main fit (not the Trainer's last) is what loading it enters (loss weights, the prior
    correction of a deferred re-weighting)."""
    _, record = run_metrics(compose_train(["loss=ce", "stage2=tau_norm", "stage2.taus=[0.0,0.5]", *LIMITS]))
    epoch = torch.load(record["best_checkpoint"], weights_only=False, map_location="cpu")["epoch"]
    assert torch.load(record["stage2_checkpoint"], weights_only=False, map_location="cpu")["epoch"] == epoch
