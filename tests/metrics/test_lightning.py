"""A LightningModule logging the ordinal val collection with ``log_dict`` gets the directly computed values."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from tailsweep.metrics import build_metric_collection

from .data import class_probs, labels

C, N, GROUP = 6, 70, 4


class _Logged(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.val_metrics = build_metric_collection("ordinal", C, stage="val", max_group_size=GROUP)

    def validation_step(self, batch, batch_idx):
        probs, target, group_id = batch
        self.val_metrics.update(probs, target, group_id=group_id)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True)


def test_log_dict_of_the_collection_matches_compute(tmp_path) -> None:
    probs, target = class_probs(N, C), labels(N, C)
    group_id = torch.randperm(N, generator=torch.Generator().manual_seed(0)) // GROUP
    loader = DataLoader(TensorDataset(probs, target, group_id), batch_size=16)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    logged = trainer.validate(_Logged(), loader, verbose=False)[0]
    direct = build_metric_collection("ordinal", C, stage="val", max_group_size=GROUP)
    direct.update(probs, target, group_id=group_id)
    expected = {key: float(value) for key, value in direct.compute().items()}
    assert logged.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(logged[key] - value) <= 1e-6 * max(1.0, abs(value)), (key, logged[key], value)
