"""Image transforms from config (torchvision v2), normalised like the backbone expects."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(
    image_size: int,
    *,
    train: bool,
    hflip: bool = True,
    vflip: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize to ``image_size``, flip (train only; counts and attributes are flip-invariant), normalise."""
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)]
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip())
    if train and vflip:
        steps.append(v2.RandomVerticalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)
