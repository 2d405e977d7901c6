"""The LightningDataModule: manifest -> validated splits -> statistics -> sharded, weighted loaders.

``setup`` reads and validates the whole manifest before any training step (files, labels, splits, groups,
sampler scheme), decodes the images of the stage's splits when caching (``fit``: all three) or reads each image's
header otherwise (a non-image file fails here, not mid-epoch), computes the training-split
``DatasetStatistics`` once and exposes them (``statistics``, ``task``, ``num_classes``), so that the loss, the
sampler, the metrics and the prior correction are all derived from the same numbers.

Loaders shard themselves (set ``use_distributed_sampler: false`` on the Trainer): training through
``ShardedRandomSampler`` (a seeded shuffle or weighted draw, a disjoint slice per rank, a new sequence per epoch
through ``set_epoch``), evaluation through ``OrderedShardSampler`` (every sample exactly once over the ranks,
no padding duplicates). Rank and world size come from the attached Trainer, else from ``torch.distributed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from tailsweep.data.datasets import BatchCollate, ManifestImageDataset, check_image_headers
from tailsweep.data.manifest import SPLITS, Manifest, ManifestError, read_manifest
from tailsweep.data.samplers import OrderedShardSampler, SamplerConfig, ShardedRandomSampler, sampling_weights
from tailsweep.data.stats import TASKS, DatasetStatistics
from tailsweep.data.transforms import TRANSFORMS, BatchTransform, build_sample_transform, resolve_normalization

log = logging.getLogger(__name__)
#: Splits whose datasets ``setup(stage)`` builds (and checks: decodes when caching, reads headers otherwise). "fit"
#: includes the test split, which train.py tests next, so that a corrupt test image fails before training.
STAGE_SPLITS = {"fit": ("train", "val", "test"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


def statistics_of(manifest: Manifest) -> DatasetStatistics:
    """Label statistics of a manifest (split) for its task."""
    kwargs = {"group_ids": manifest.group_ids, "class_names": manifest.class_names}
    if manifest.task == "soft":
        return DatasetStatistics.from_soft_targets(manifest.targets, **kwargs)
    if manifest.task == "multilabel":
        return DatasetStatistics.from_multilabel_targets(manifest.targets, **kwargs)
    return DatasetStatistics.from_labels(manifest.targets, manifest.num_classes, task=manifest.task, **kwargs)


class TailDataModule(L.LightningDataModule):
    """Images listed in a manifest (CSV, Parquet or class folders), for any of the four tasks.

    Manifest (see ``manifest.read_manifest`` for every column option): ``manifest`` is the file or folder,
    ``task`` the target kind, ``num_classes`` C or L (inferred from class names / columns when omitted).

    Images: ``image_size`` (square side), ``normalization`` (``imagenet``, a timm model name, or
    ``{mean, std}``), ``transform`` (``tensor``: flips + normalisation per batch; ``timm``: timm's
    ``create_transform`` with ``timm_kwargs``), ``hflip``/``vflip``, or ``train_transform``/``eval_transform``
    callables (e.g. a torchvision v2 ``Compose`` from Hydra) that replace them; ``cache_images`` decodes every
    image once at setup (skipped above ``cache_max_gb``). ``device_transforms`` moves the batched flips and
    normalisation after the transfer to the accelerator (``on_after_batch_transfer``): loaders then yield
    ``uint8`` images, 4x less to copy, and the CPU only indexes the cache (for GPU runs without workers).

    Loading: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``drop_last`` (training).

    Sampling: ``sampler`` (a ``SamplerConfig`` mapping: ``scheme``, ``beta``, ``power``, ``explicit``,
    ``multilabel_reduction``, ``negative_weight``, ``num_samples``) and ``seed`` (the same on every rank).

    ``generator`` names the embedded dataset's generator, for the message when the manifest is missing.
    """

    def __init__(
        self,
        manifest: str,
        num_classes: int | None = None,
        task: str = "multiclass",
        class_names: Sequence[str] | str | None = None,
        format: str = "auto",
        path_column: str = "path",
        label_column: str | None = "label",
        label_columns: Sequence[str] | str | None = None,
        label_delimiter: str = "|",
        group_column: str | None = "group_id",
        split_column: str | None = "split",
        weight_column: str | None = None,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        soft_tolerance: float = 1e-3,
        check_files: bool = True,
        image_size: int = 48,
        normalization: str | Mapping[str, Sequence[float]] | None = "imagenet",
        transform: str = "tensor",
        timm_kwargs: Mapping[str, Any] | None = None,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        hflip: bool = True,
        vflip: bool = False,
        cache_images: bool = True,
        cache_max_gb: float = 4.0,
        device_transforms: bool = False,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
        sampler: Mapping[str, Any] | SamplerConfig | None = None,
        seed: int | None = 0,
        generator: str | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"TailDataModule: task must be one of {TASKS}, got {task!r}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"TailDataModule: batch sizes must be >= 1, got {batch_size}, {eval_batch_size}")
        if image_size < 1:
            raise ValueError(f"TailDataModule: image_size must be >= 1, got {image_size}")
        if transform not in TRANSFORMS:
            raise ValueError(f"TailDataModule: transform must be one of {TRANSFORMS}, got {transform!r}")
        if num_workers < 0:
            raise ValueError(f"TailDataModule: num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters(logger=False, ignore=["train_transform", "eval_transform"])
        self.manifest_path = Path(manifest)
        self.task = task
        self.num_classes = num_classes
        self.class_names: tuple[str, ...] | None = None
        self.sampler_config = SamplerConfig.from_mapping(sampler)
        self.seed = 0 if seed is None else int(seed)
        self.mean, self.std = resolve_normalization(normalization)
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self._manifest: Manifest | None = None
        self._splits: dict[str, Manifest] = {}
        self._datasets: dict[str, ManifestImageDataset] = {}
        self._statistics: DatasetStatistics | None = None
        self._train_weights: torch.Tensor | None = None
        self._batch_transforms = {
            train: BatchTransform(self.mean, self.std, hflip=train and hflip, vflip=train and vflip)
            for train in (True, False)
        }

    # ----------------------------------------------------------------------------------------------- setup
    @property
    def statistics(self) -> DatasetStatistics:
        """Training-split statistics (available after ``setup``)."""
        if self._statistics is None:
            raise RuntimeError("TailDataModule.statistics is available after setup()")
        return self._statistics

    def setup(self, stage: str | None = None) -> None:
        """Validate the manifest (once) and build the datasets of ``stage`` (all splits for ``None``)."""
        if self._manifest is None:
            self._read()
        for split in STAGE_SPLITS.get(stage or "", SPLITS):
            if split not in self._datasets:
                self._datasets[split] = self._build_dataset(split)

    def _read(self) -> None:
        hp = self.hparams
        if not self.manifest_path.exists():
            how = (f"run `tailsweep-generate {hp.generator} --root {self.manifest_path.parent}` (or `make data`)"
                   if hp.generator else "point data.manifest at your CSV, Parquet file or image folder")
            raise ManifestError(f"manifest {self.manifest_path} does not exist: {how}.")
        manifest = read_manifest(
            self.manifest_path, task=self.task, num_classes=self.num_classes, class_names=hp.class_names,
            format=hp.format, path_column=hp.path_column, label_column=hp.label_column,
            label_columns=hp.label_columns, label_delimiter=hp.label_delimiter, group_column=hp.group_column,
            split_column=hp.split_column, weight_column=hp.weight_column, split_fractions=tuple(hp.split_fractions),
            split_seed=hp.split_seed, soft_tolerance=hp.soft_tolerance, check_files=hp.check_files,
        )
        splits = {split: manifest.select(split) for split in SPLITS}
        for split, part in splits.items():
            if len(part) == 0:
                sizes = {name: len(p) for name, p in splits.items()}
                raise ManifestError(
                    f"manifest {self.manifest_path}: split {split!r} has no rows (rows per split: {sizes}); "
                    f"give it rows in the split column, or drop the column for a seeded "
                    f"{list(hp.split_fractions)} split"
                )
        statistics = statistics_of(splits["train"])
        self._train_weights = sampling_weights(self.sampler_config, statistics, splits["train"].targets,
                                               splits["train"].weights)
        self.num_classes = manifest.num_classes
        self.class_names = manifest.class_names
        self._manifest, self._splits, self._statistics = manifest, splits, statistics

    def _build_dataset(self, split: str) -> ManifestImageDataset:
        hp = self.hparams
        train = split == "train"
        custom = self.train_transform if train else self.eval_transform
        sample_transform = custom or build_sample_transform(
            hp.transform, hp.image_size, train=train, mean=self.mean, std=self.std, hflip=hp.hflip, vflip=hp.vflip,
            timm_kwargs=hp.timm_kwargs)
        part = self._splits[split]
        cache = hp.cache_images
        gigabytes = len(part) * 3 * hp.image_size**2 / 1e9
        if cache and gigabytes > hp.cache_max_gb:
            log.warning("not caching the %s split: %.1f GB of decoded images exceed data.cache_max_gb=%s",
                        split, gigabytes, hp.cache_max_gb)
            cache = False
        if not cache and hp.check_files:
            check_image_headers(part)  # a cached split is decoded (checked) as it is built
        return ManifestImageDataset(part, image_size=hp.image_size, sample_transform=sample_transform, cache=cache)

    def split(self, name: str) -> Manifest:
        """The validated rows of one split (after ``setup``)."""
        return self._splits[name]

    def dataset(self, name: str) -> ManifestImageDataset:
        """The dataset of one split (built on first use when ``setup`` of its stage has not built it)."""
        if self._manifest is None:
            self._read()
        if name not in self._datasets:
            self._datasets[name] = self._build_dataset(name)
        return self._datasets[name]

    # ---------------------------------------------------------------------------------------------- loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def train_sampler(self) -> ShardedRandomSampler:
        """This rank's training sampler (weighted per ``sampler.scheme``, or a seeded shuffle)."""
        rank, world_size = self._rank_world()
        flips = self._batch_transforms[True]
        sampler = ShardedRandomSampler(len(self.split("train")), self._train_weights,
                                       num_samples=self.sampler_config.num_samples, seed=self.seed, rank=rank,
                                       world_size=world_size, block_size=self.hparams.batch_size,
                                       on_epoch=lambda epoch: flips.reseed(self.seed * 1_000_003 + epoch),
                                       on_skip=lambda start: flips.skip(start // self.hparams.batch_size,
                                                                        self.hparams.batch_size))
        trainer = self.trainer
        if trainer is not None and trainer.training:
            # Lightning sets the epoch only after the loader's first iterator exists, which on resume already drew
            # the first batch; start from the epoch Lightning is about to run (the value it would set).
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        return sampler

    def _loader(self, split: str, sampler: torch.utils.data.Sampler, batch_size: int, drop_last: bool) -> DataLoader:
        hp = self.hparams
        batch_transform = None if hp.device_transforms else self._batch_transforms[split == "train"]
        return DataLoader(
            self.dataset(split), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
            collate_fn=BatchCollate(batch_transform), num_workers=hp.num_workers, pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``device_transforms``: flips (training) and normalisation on the device, once per batch."""
        if self.hparams.device_transforms and isinstance(batch, dict) and "image" in batch:
            training = self.trainer is not None and self.trainer.training
            batch["image"] = self._batch_transforms[training](batch["image"])
        return batch

    @property
    def train_sample_weights(self) -> torch.Tensor | None:
        """Per-row weights the training sampler draws with (None: a plain shuffle); the prior correction uses them."""
        return self._train_weights

    def train_dataloader(self) -> DataLoader:
        sampler = self.train_sampler()
        # drop a ragged last batch (BatchNorm fails on a batch of one) unless it is the only batch
        drop_last = self.hparams.drop_last and len(sampler) >= self.hparams.batch_size
        return self._loader("train", sampler, self.hparams.batch_size, drop_last)

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world_size = self._rank_world()
        sampler = OrderedShardSampler(len(self.dataset(split)), rank=rank, world_size=world_size)
        return self._loader(split, sampler, self.hparams.eval_batch_size or self.hparams.batch_size, False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
