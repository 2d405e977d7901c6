"""The LightningDataModule: manifest -> validated splits -> statistics -> loaders.

``setup`` reads and validates the whole manifest before any training step, computes the training-split
``DatasetStatistics`` once, and exposes them (``statistics``, ``task``, ``num_classes``) so that the loss, the
sampler, the metrics and the prior correction are all derived from the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from tailsweep.data.datasets import ManifestImageDataset
from tailsweep.data.manifest import SPLITS, Manifest, ManifestError, read_manifest
from tailsweep.data.stats import TASKS, DatasetStatistics
from tailsweep.data.transforms import build_transform


class TailDataModule(L.LightningDataModule):
    """Images listed in a manifest CSV (``path,label[,group_id][,split]``), split by its ``split`` column."""

    def __init__(
        self,
        manifest: str,
        num_classes: int,
        task: str = "ordinal",
        image_size: int = 48,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_images: bool = True,
        hflip: bool = True,
        vflip: bool = False,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"TailDataModule: task must be one of {TASKS}, got {task!r}")
        if batch_size < 1:
            raise ValueError(f"TailDataModule: batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters(logger=False)
        self.manifest_path = Path(manifest)
        self.num_classes = num_classes
        self.task = task
        self._splits: dict[str, Manifest] = {}
        self._statistics: DatasetStatistics | None = None

    @property
    def statistics(self) -> DatasetStatistics:
        """Training-split statistics (available after ``setup``)."""
        if self._statistics is None:
            raise RuntimeError("TailDataModule.statistics is available after setup()")
        return self._statistics

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        manifest = read_manifest(self.manifest_path, num_classes=self.num_classes)
        for split in SPLITS:
            part = manifest.select(split)
            if len(part) == 0:
                raise ManifestError(f"manifest {self.manifest_path}: split {split!r} has no rows")
            self._splits[split] = part
        train = self._splits["train"]
        self._statistics = DatasetStatistics.from_labels(
            train.targets, self.num_classes, task=self.task, group_ids=train.group_ids
        )

    def split(self, name: str) -> Manifest:
        """The validated rows of one split (after ``setup``)."""
        return self._splits[name]

    def _dataset(self, split: str) -> ManifestImageDataset:
        hp = self.hparams
        transform = build_transform(hp.image_size, train=split == "train", hflip=hp.hflip, vflip=hp.vflip)
        return ManifestImageDataset(self._splits[split], transform, cache=hp.cache_images)

    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self._dataset(split),
            batch_size=hp.batch_size if split == "train" else (hp.eval_batch_size or hp.batch_size),
            shuffle=shuffle,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
