"""Deferred re-weighting through Lightning: the switch happens at the configured epoch and a run resumed across
it ends with the uninterrupted run's weights and correction."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses import RankedProbabilityScoreLoss
from tailsweep.models.module import TailClassifier

LABELS = torch.repeat_interleave(torch.arange(4), torch.tensor([18, 8, 4, 2]))
STATISTICS = DatasetStatistics.from_labels(LABELS, 4, task="ordinal")


class EpochRecord(L.Callback):
    """The loss's weight state and the correction's offset seen in each training epoch."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[bool, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.seen[trainer.current_epoch] = (pl_module.loss.weights_in_force,
                                                pl_module.correction.offset.clone())


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(len(LABELS), 3, 16, 16, generator=generator)
    rows = [{"image": images[i], "target": LABELS[i]} for i in range(len(LABELS))]
    return DataLoader(rows, batch_size=8, shuffle=False)


def _module() -> TailClassifier:
    torch.manual_seed(0)
    loss = RankedProbabilityScoreLoss(class_weights="inverse", reweight_from_epoch=2)
    return TailClassifier("tiny_cnn", loss, STATISTICS, partial(torch.optim.SGD, lr=0.5), metrics={"train": []},
                          backbone_kwargs={"width": 4, "num_stages": 2})


def _fit(module: TailClassifier, max_epochs: int, root: Path, ckpt_path: str | None = None) -> EpochRecord:
    record = EpochRecord()
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                        default_root_dir=root, deterministic=True)
    trainer.fit(module, train_dataloaders=_loader(), ckpt_path=ckpt_path, weights_only=False)
    if ckpt_path is None:
        trainer.save_checkpoint(root / f"epoch{max_epochs}.ckpt")
    return record


def test_reweighting_switches_at_its_epoch_and_resumes_across_the_switch(tmp_path: Path) -> None:
    whole = _module()
    record = _fit(whole, 4, tmp_path / "whole")
    assert [record.seen[epoch][0] for epoch in range(4)] == [False, False, True, True]
    assert (record.seen[0][1] == 0).all() and (record.seen[3][1] != 0).all()
    assert whole.correction.active

    first = _module()
    _fit(first, 2, tmp_path / "first")  # epochs 0-1, unweighted; the checkpoint says epoch 2
    resumed = _module()
    record = _fit(resumed, 4, tmp_path / "resumed", ckpt_path=str(tmp_path / "first" / "epoch2.ckpt"))
    assert sorted(record.seen) == [2, 3] and all(record.seen[epoch][0] for epoch in (2, 3))
    for (name, value), (_, expected) in zip(resumed.state_dict().items(), whole.state_dict().items(), strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=name)
    torch.testing.assert_close(resumed.correction.offset, whole.correction.offset)

    evaluated = _module()  # loading the final checkpoint for evaluation restores the correction in force
    checkpoint = torch.load(tmp_path / "whole" / "epoch4.ckpt", weights_only=False)
    evaluated.on_load_checkpoint(checkpoint)
    evaluated.load_state_dict(checkpoint["state_dict"])
    assert evaluated.correction.active and evaluated.loss.weights_in_force
