"""Image datasets that yield ``{"image", "target", "group_id", "index"}`` dictionaries."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from tailsweep.data.manifest import Manifest, ManifestError


def load_image(path: str, row: int | None = None, source: object = None) -> Image.Image:
    """Decode one image as RGB; a missing or corrupt file names the file and the manifest row."""
    where = f"manifest {source}, row {row}: " if row is not None else ""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ManifestError(f"{where}image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ManifestError(f"{where}image file {path} cannot be decoded ({error})") from None


class ManifestImageDataset(Dataset):
    """The rows of a (validated) manifest as model inputs.

    ``cache=True`` keeps decoded images in memory after their first read (per worker process), which makes the
    small embedded datasets decode once instead of once per epoch.
    """

    def __init__(self, manifest: Manifest, transform: Callable[[Image.Image], Tensor], cache: bool = False) -> None:
        self.manifest = manifest
        self.transform = transform
        self.cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = self.cache.get(index) if self.cache is not None else None
        if image is None:
            image = load_image(self.manifest.paths[index], int(self.manifest.rows[index]), self.manifest.source)
            if self.cache is not None:
                self.cache[index] = image
        return {
            "image": self.transform(image),
            "target": self.manifest.targets[index],
            "group_id": self.manifest.group_ids[index],
            "index": torch.tensor(index),
        }
