"""The rows of a manifest split as model inputs: ``{"image", "target", "group_id", "index"}`` per sample or batch.

Images are decoded to ``uint8 [3, S, S]`` (resized once to the configured size). With ``cache=True`` the whole
split is decoded when the dataset is built, in threads, into one ``uint8 [N, 3, S, S]`` tensor: a corrupt file
fails then, before training, and a batch is one index into the cache. With a ``cache_dir`` the decoded split is
also written there once (``cache.DiskImageCache``) and memory-mapped by later runs and sweep jobs instead of
decoded. ``__getitems__`` returns a whole batch, so the DataLoader (with ``BatchCollate``) does the flips and the
normalisation once per batch, not per image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from tailsweep.data.cache import DiskImageCache
from tailsweep.data.manifest import Manifest, ManifestError
from tailsweep.data.transforms import BatchTransform, SampleTransform, pil_to_uint8, uint8_to_pil

log = logging.getLogger(__name__)


def load_image(path: str, row: int | None = None, source: object = None) -> Image.Image:
    """Decode one image as RGB; a missing or corrupt file names the file and the manifest row."""
    where = f"manifest {source}, row {row}: " if row is not None else ""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ManifestError(f"{where}image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ManifestError(f"{where}image file {path} cannot be decoded ({error})") from None


def check_image_headers(manifest: Manifest, threads: int | None = None) -> None:
    """Every image of ``manifest`` opens as an image, without decoding the pixels: PIL reads the header (format
    and size) and ``verify``s what the format allows (PNG: every chunk's checksum up to the end of the file).

    Catches, before training, files that are not images (text, HTML error pages, empty files) and truncated PNGs
    in splits that are not decoded at setup; other formats cut short after a valid header (JPEG) fail at their
    first decode, naming the row. The first bad row (in manifest order) is named in a ``ManifestError``.
    """

    def check(index: int) -> None:
        path = manifest.paths[index]
        where = f"{manifest.where(index)}: image file {path}"
        try:
            with Image.open(path) as image:
                width, height = image.size
                image.verify()
        except FileNotFoundError:
            raise ManifestError(f"{where} does not exist") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ManifestError(f"{where} is not a readable image ({error})") from None
        if width < 1 or height < 1:
            raise ManifestError(f"{where}: expected an image of at least 1x1 pixels, got {width}x{height}")

    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(check, range(len(manifest))):
            pass


class ManifestImageDataset(Dataset):
    """Images and targets of one validated manifest split.

    Args:
        manifest: the split's rows.
        image_size: side S of the square images handed on (resized once, at decode).
        sample_transform: optional per-sample transform of the ``PIL`` image (timm, torchvision); without it
            samples are ``uint8`` and ``BatchTransform`` converts them per batch.
        cache: decode every image now into one ``uint8`` tensor (``N * 3 * S * S`` bytes).
        threads: decoding threads for the cache.
        cache_dir: with ``cache``, where the decoded split is kept on disk and memory-mapped from by later runs
            (``cache.DiskImageCache``); ``None``: in memory only, decoded by every run.

    Targets: int64 (multiclass, ordinal), float32 rows (soft), float32 with 1/0/-1 (multilabel).
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        image_size: int,
        sample_transform: SampleTransform | None = None,
        cache: bool = False,
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.manifest = manifest
        self.image_size = image_size
        self.sample_transform = sample_transform
        self.targets = manifest.targets if manifest.task != "multilabel" else manifest.targets.to(torch.float32)
        self.group_ids = manifest.group_ids
        self.threads = threads
        #: the ``.npy`` file the images are mapped from (None: decoded in memory, or not cached)
        self.cache_file: Path | None = None
        self.images: Tensor | None = None
        if cache and cache_dir is not None:
            self.images, self.cache_file = DiskImageCache(cache_dir).images(
                manifest, image_size, lambda: self._decode_all(threads))
        elif cache:
            self.images = self._decode_all(threads)

    def __getstate__(self) -> dict[str, Any]:
        # a worker or spawned process maps the cache file again instead of receiving a pickled copy of the pixels
        state = dict(self.__dict__)
        if self.cache_file is not None:
            state["images"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.cache_file is not None and self.images is None:
            # the file the pickling process checked moments ago; its key is only recomputed when it has gone
            cache = DiskImageCache(self.cache_file.parent)
            self.images = cache.load(self.cache_file, (len(self), 3, self.image_size, self.image_size))
            if self.images is None:
                self.images, self.cache_file = cache.images(self.manifest, self.image_size,
                                                            lambda: self._decode_all(self.threads))

    def __len__(self) -> int:
        return len(self.manifest)

    def decode(self, index: int) -> Tensor:
        """``uint8 [3, S, S]`` of entry ``index``, from the cache or the file."""
        if self.images is not None:
            return self.images[index]
        image = load_image(self.manifest.paths[index], int(self.manifest.rows[index]), self.manifest.source)
        return pil_to_uint8(image, self.image_size)

    def _image(self, index: int) -> Tensor:
        if self.sample_transform is None:
            return self.decode(index)
        if self.images is not None:
            return self.sample_transform(uint8_to_pil(self.images[index]))
        image = load_image(self.manifest.paths[index], int(self.manifest.rows[index]), self.manifest.source)
        return self.sample_transform(image)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            "image": self._image(index),
            "target": self.targets[index],
            "group_id": self.group_ids[index],
            "index": torch.tensor(index),
        }

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.images is not None and self.sample_transform is None:
            images = self.images[index]
        else:
            images = torch.stack([self._image(i) for i in indices])
        return {"image": images, "target": self.targets[index], "group_id": self.group_ids[index], "index": index}

    def _decode_all(self, threads: int | None) -> Tensor:
        size = self.image_size
        images = torch.empty((len(self), 3, size, size), dtype=torch.uint8)

        def decode_into(index: int) -> None:
            image = load_image(self.manifest.paths[index], int(self.manifest.rows[index]), self.manifest.source)
            images[index] = pil_to_uint8(image, size)

        workers = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(decode_into, range(len(self))):
                pass
        return images


class BatchCollate:
    """``collate_fn`` for ``ManifestImageDataset``: stacks samples when needed, then applies ``BatchTransform``
    to the images (``uint8`` images become normalised ``float32``; float images are kept). Without a transform
    the images stay ``uint8`` (for a transform on the device after the transfer)."""

    def __init__(self, transform: BatchTransform | None) -> None:
        self.transform = transform

    def __call__(self, batch: dict[str, Tensor] | list[dict[str, Tensor]]) -> dict[str, Tensor]:
        if not isinstance(batch, dict):
            batch = default_collate(batch)
        if self.transform is not None:
            batch["image"] = self.transform(batch["image"])
        return batch
