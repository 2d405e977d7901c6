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
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from torch.utils.data import DataLoader

from tailsweep.data.datasets import BatchCollate, ManifestImageDataset, check_image_headers
from tailsweep.data.manifest import SPLITS, Manifest, ManifestError, ReaderOptions
from tailsweep.data.manifest_share import read_manifest_shared
from tailsweep.data.samplers import OrderedShardSampler, SamplerConfig, ShardedRandomSampler, sampling_weights
from tailsweep.data.stats import DatasetStatistics
from tailsweep.data.transforms import TRANSFORMS, BatchTransform, build_sample_transform, resolve_normalization
from tailsweep.data.weighting import sampling_shift
from tailsweep.tasks import HARD_LABEL_TASKS, TASKS

log = logging.getLogger(__name__)
#: Splits whose datasets ``setup(stage)`` builds (and checks: decodes when caching, reads headers otherwise). "fit"
#: includes the test split, which train.py tests next, so that a corrupt test image fails before training.
STAGE_SPLITS = {"fit": ("train", "val", "test"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
#: ``image_size=native`` is capped here when the backbone states no input size of its own (tiny_cnn, a module)
DEFAULT_MAX_IMAGE_SIZE = 224
#: images whose header ``image_size=native`` reads (evenly spaced over the training split)
NATIVE_SIZE_SAMPLE = 1024


@dataclass(frozen=True)
class DataHints:
    """What the datamodule's ``auto`` values need from the rest of the run's config, passed in as values (the data
    package never imports the loss or the model).

    Attributes:
        loss_tasks: the tasks the chosen loss supports (``task=auto``: its hard-label family).
        loss: the loss's name, for the setup line (``task ordinal (from loss corn)``).
        backbone: the backbone's timm name, for ``normalization=auto`` (its pretrained mean/std).
        input_size: the backbone's default input side, the cap of ``image_size=native``.
    """

    loss_tasks: tuple[str, ...] | None = None
    loss: str | None = None
    backbone: str | None = None
    input_size: int | None = None

    @classmethod
    def from_mapping(cls, hints: Mapping[str, Any] | DataHints | None) -> DataHints:
        if isinstance(hints, DataHints):
            return hints
        hints = dict(hints or {})
        unknown = sorted(set(hints) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"TailDataModule: unknown hints {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        tasks = hints.get("loss_tasks")
        backbone = hints.get("backbone")
        size = hints.get("input_size")
        return cls(None if tasks is None else tuple(str(t) for t in tasks), hints.get("loss"),
                   backbone if isinstance(backbone, str) else None, None if size is None else int(size))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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

    Source: ``manifest`` (a CSV / Parquet file, or an image folder) or ``root`` (an image folder:
    ``root/<class>/<image>``); ``reader`` holds how its columns are read (``manifest.ReaderOptions``: column
    names, split fractions, checks).

    What the data can tell is inferred when set to ``auto`` and said in one line at setup: ``task`` (soft for
    probability columns, multilabel for a multi-hot block or for label lists with a multi-label loss, else the
    hard-label task of the loss in ``hints``: ordinal for an ordinal loss, multiclass otherwise), ``num_classes``
    (class names, folders, label columns, or the largest label + 1; a class without a training sample is named in
    a warning), ``image_size`` (``native``: the images' own side, the median when they differ, capped at the
    backbone's input size), ``num_workers`` (no more than the cores; 0 on one core or for the decoded cache) and
    ``pin_memory`` (only when the loaders feed a GPU). ``hints`` (a ``DataHints`` mapping) carries the loss's
    tasks and the backbone from the rest of the config.

    Images: ``normalization`` (``auto``: the backbone's, ``imagenet``, a timm model name, or ``{mean, std}``),
    ``transform`` (``tensor``: flips + normalisation per batch; ``timm``: timm's ``create_transform`` with
    ``timm_kwargs``), ``hflip``/``vflip``, or ``train_transform``/``eval_transform`` callables (e.g. a torchvision
    v2 ``Compose`` from Hydra) that replace them; ``cache_images`` decodes every image once at setup (skipped above
    ``cache_max_gb``), into ``cache_dir`` when set: a memory-mapped file per split that later runs and sweep jobs
    map instead of decoding again (``cache.DiskImageCache``; ``None``: in memory, decoded by every run).
    ``device_transforms`` moves the batched flips and normalisation after the transfer to the accelerator
    (``on_after_batch_transfer``): loaders then yield ``uint8`` images, 4x less to copy, and the CPU only indexes
    the cache (for GPU runs without workers).

    Loading: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``drop_last`` (training).

    Sampling: ``sampler`` (a ``SamplerConfig`` mapping: ``scheme``, ``beta``, ``power``, ``explicit``,
    ``multilabel_reduction``, ``negative_weight``, ``num_samples``, ``from_epoch``: plain shuffles before it) and
    ``seed`` (the same on every rank).

    ``generator`` names the embedded dataset's generator, for the message when the manifest is missing.
    """

    def __init__(
        self,
        manifest: str | None = None,
        num_classes: int | str | None = None,
        task: str = "auto",
        class_names: Sequence[str] | str | None = None,
        reader: Mapping[str, Any] | ReaderOptions | None = None,
        root: str | None = None,
        image_size: int | str = 48,
        normalization: str | Mapping[str, Sequence[float]] | None = "auto",
        transform: str = "tensor",
        timm_kwargs: Mapping[str, Any] | None = None,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        hflip: bool = True,
        vflip: bool = False,
        cache_images: bool = True,
        cache_max_gb: float = 4.0,
        cache_dir: str | None = None,
        device_transforms: bool = False,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        drop_last: bool = True,
        sampler: Mapping[str, Any] | SamplerConfig | None = None,
        seed: int | None = 0,
        generator: str | None = None,
        hints: Mapping[str, Any] | DataHints | None = None,
    ) -> None:
        super().__init__()
        if task != "auto" and task not in TASKS:
            raise ValueError(f"TailDataModule: task must be auto or one of {TASKS}, got {task!r}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"TailDataModule: batch sizes must be >= 1, got {batch_size}, {eval_batch_size}")
        if image_size != "native" and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"TailDataModule: image_size must be native or an integer >= 1, got {image_size!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"TailDataModule: transform must be one of {TRANSFORMS}, got {transform!r}")
        if num_workers != "auto" and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"TailDataModule: num_workers must be auto or an integer >= 0, got {num_workers!r}")
        if pin_memory not in ("auto", True, False):
            raise ValueError(f"TailDataModule: pin_memory must be auto, true or false, got {pin_memory!r}")
        if num_classes not in (None, "auto") and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"TailDataModule: num_classes must be auto or an integer >= 1, got {num_classes!r}")
        if (manifest is None) == (root is None):
            raise ValueError(f"TailDataModule: give one of data.manifest (a CSV, Parquet file or image folder) and "
                             f"data.root (an image folder), got manifest={manifest!r}, root={root!r}")
        self.save_hyperparameters(logger=False, ignore=["train_transform", "eval_transform"])
        self.manifest_path = Path(manifest if root is None else root)
        self.reader = ReaderOptions.from_mapping(reader)
        if root is not None and self.reader.format not in ("auto", "folder"):
            raise ValueError(f"TailDataModule: data.root is an image folder, but data.reader.format is "
                             f"{self.reader.format!r}; point data.manifest at the file instead")
        self.hints = DataHints.from_mapping(hints)
        self.task = task
        self.num_classes = None if num_classes == "auto" else num_classes
        self.class_names: tuple[str, ...] | None = None
        self.image_size: int | None = None if image_size == "native" else image_size
        self.num_workers = num_workers if num_workers != "auto" else self._auto_workers(cache_images, transform)
        self.sampler_config = SamplerConfig.from_mapping(sampler)
        self.seed = 0 if seed is None else int(seed)
        if normalization == "auto":
            normalization = self.hints.backbone or "imagenet"
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

    def _auto_workers(self, cache_images: bool, transform: str) -> int:
        """``num_workers=auto``: none on one core or when the batches are slices of the decoded cache (the loader
        only indexes memory), else one per core beside the training process, at most 8."""
        cores = available_cores()
        if cores <= 1 or (cache_images and transform == "tensor"):
            return 0
        return min(cores - 1, 8)

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
            where = "data.root at your image folder" if hp.root is not None else \
                "data.manifest at your CSV, Parquet file or image folder"
            how = (f"run `tailsweep-generate {hp.generator} --root {self.manifest_path.parent}` (or `make data`)"
                   if hp.generator else f"point {where}")
            raise ManifestError(f"{'image folder' if hp.root is not None else 'manifest'} {self.manifest_path} does "
                                f"not exist: {how}.")
        options = {**vars(self.reader), "format": "folder" if hp.root is not None else self.reader.format}
        # under DDP the other ranks of this machine load local rank 0's parse of a large manifest (manifest_share)
        manifest = read_manifest_shared(self.manifest_path, task=self.task, num_classes=self.num_classes,
                                        class_names=hp.class_names, loss_tasks=self.hints.loss_tasks, **options)
        splits = {split: manifest.select(split) for split in SPLITS}
        for split, part in splits.items():
            if len(part) == 0:
                sizes = {name: len(p) for name, p in splits.items()}
                raise ManifestError(
                    f"manifest {self.manifest_path}: split {split!r} has no rows (rows per split: {sizes}); "
                    f"give it rows in the split column, or drop the column for a seeded "
                    f"{list(self.reader.split_fractions)} split"
                )
        statistics = statistics_of(splits["train"])
        self._train_weights = sampling_weights(self.sampler_config, statistics, splits["train"].targets,
                                               splits["train"].weights)
        inferred_task = self.task == "auto"
        self.task, self.num_classes, self.class_names = manifest.task, manifest.num_classes, manifest.class_names
        self._manifest, self._splits, self._statistics = manifest, splits, statistics
        size_note = self._resolve_image_size(splits["train"])
        self._warn_empty_classes(statistics)
        if rank_zero_only.rank == 0:
            log.info("data: %s", ", ".join((self._task_note(inferred_task), self._classes_note(), size_note,
                                            f"num_workers {self.num_workers}",
                                            f"pin_memory {'on' if self._pin_memory() else 'off'}")))

    def _task_note(self, inferred: bool) -> str:
        if not inferred:
            return f"task {self.task}"
        if self.task == "soft":
            why = "probability columns"
        elif self.task == "multilabel":
            why = ("multi-hot columns" if self.reader.label_columns is not None
                   else f"label lists, from loss {self.hints.loss or 'of the run'}")
        elif self.hints.loss_tasks is not None:
            why = f"from loss {self.hints.loss or 'of the run'}"
        else:
            why = "labels are class indices; no loss given"
        return f"task {self.task} ({why})"

    def _classes_note(self) -> str:
        what = "classes" if self.task in HARD_LABEL_TASKS or self.task == "soft" else "labels"
        names = self.class_names
        if names is not None:
            shown = ", ".join(names) if len(names) <= 6 else f"{names[0]}..{names[-1]}"
            return f"{self.num_classes} {what} ({shown})"
        return f"{self.num_classes} {what} (labels 0..{self.num_classes - 1})"

    def _resolve_image_size(self, train: Manifest) -> str:
        """``image_size=native``: the training images' own side (read from a sample of headers)."""
        if self.image_size is not None:
            return f"image_size {self.image_size}"
        rows = np.unique(np.linspace(0, len(train) - 1, min(len(train), NATIVE_SIZE_SAMPLE)).astype(np.int64))

        def size_of(index: int) -> tuple[int, int]:
            try:
                with Image.open(train.paths[index]) as image:
                    return image.size
            except (OSError, SyntaxError, ValueError) as error:
                raise ManifestError(f"{train.where(index)}: image file {train.paths[index]} is not a readable "
                                    f"image ({error})") from None

        with ThreadPoolExecutor(max_workers=min(8, available_cores())) as pool:
            sizes = list(pool.map(size_of, rows.tolist()))
        distinct = sorted(set(sizes))
        sides = np.array([max(width, height) for width, height in sizes])
        side = int(sides[0]) if len(set(sides.tolist())) == 1 else int(np.median(sides))
        if len(distinct) == 1:
            seen = "images {}x{}".format(*distinct[0])
        else:
            seen = (f"images of {len(distinct)} sizes ({distinct[0][0]}x{distinct[0][1]}..{distinct[-1][0]}x"
                    f"{distinct[-1][1]}, median side {side})")
        cap = self.hints.input_size or DEFAULT_MAX_IMAGE_SIZE
        self.image_size = min(side, cap)
        capped = f", capped at the backbone's input size {cap}" if side > cap else ""
        return f"{seen} -> image_size {self.image_size}{capped}"

    def _warn_empty_classes(self, statistics: DatasetStatistics) -> None:
        empty = torch.nonzero(statistics.class_counts == 0).flatten().tolist()
        if not empty or rank_zero_only.rank != 0:
            return
        names = self.class_names
        shown = [f"{k} ({names[k]})" if names is not None else str(k) for k in empty[:20]]
        what = "label(s) without a positive" if self.task == "multilabel" else "class(es) without a sample"
        log.warning("data: %d %s in the training split: %s%s. The model cannot learn them from this split; add "
                    "examples, or check data.num_classes / data.class_names.", len(empty), what, ", ".join(shown),
                    " ..." if len(empty) > 20 else "")

    def _pin_memory(self) -> bool:
        """``pin_memory=auto``: pinned host memory only when the batches go to a CUDA device."""
        if self.hparams.pin_memory != "auto":
            return bool(self.hparams.pin_memory)
        if self.trainer is not None:
            return self.trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _build_dataset(self, split: str) -> ManifestImageDataset:
        hp = self.hparams
        train = split == "train"
        custom = self.train_transform if train else self.eval_transform
        sample_transform = custom or build_sample_transform(
            hp.transform, self.image_size, train=train, mean=self.mean, std=self.std, hflip=hp.hflip, vflip=hp.vflip,
            timm_kwargs=hp.timm_kwargs)
        part = self._splits[split]
        cache = hp.cache_images
        gigabytes = len(part) * 3 * self.image_size**2 / 1e9
        if cache and gigabytes > hp.cache_max_gb:
            log.warning("not caching the %s split: %.1f GB of decoded images exceed data.cache_max_gb=%s",
                        split, gigabytes, hp.cache_max_gb)
            cache = False
        if not cache and self.reader.check_files:
            check_image_headers(part)  # a cached split is decoded (checked) as it is built
        return ManifestImageDataset(part, image_size=self.image_size, sample_transform=sample_transform, cache=cache,
                                    cache_dir=hp.cache_dir)

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
                                                                        self.hparams.batch_size),
                                       weighted_from_epoch=self.sampler_config.from_epoch)
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
            collate_fn=BatchCollate(batch_transform), num_workers=self.num_workers, pin_memory=self._pin_memory(),
            persistent_workers=self.num_workers > 0,
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

    @property
    def sampling_shift(self) -> torch.Tensor | None:
        """Log-space shift the weighted sampler puts on the training prior (float64 ``[C]``; None without weighted
        sampling), for the prior correction: ``tailsweep.data.weighting.sampling_shift``."""
        if self._train_weights is None:
            return None
        return sampling_shift(self.statistics, self._train_weights, self.split("train").targets)

    @property
    def sampling_from_epoch(self) -> int | None:
        """The epoch from which the training sampler draws with its weights (``sampler.from_epoch``; None: from
        the start, or no weighted sampling): the module's correction undoes ``sampling_shift`` from then on."""
        return None if self._train_weights is None else self.sampler_config.from_epoch

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
