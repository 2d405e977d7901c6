"""Image transforms from config: batched tensor flips + normalisation by default, timm's factory on request.

The default pipeline decodes (or takes from the cache) each image as ``uint8 [3, S, S]`` and does the random
flips and the normalisation once per batch on a ``[B, 3, S, S]`` tensor (``BatchTransform``), which is what keeps
the loader far ahead of the training step. ``timm`` (``create_transform``) or any callable (e.g. a torchvision v2
``Compose`` built by Hydra) can replace it per sample for heavier augmentation. Normalisation follows the
backbone: a timm model name gives that model's pretrained mean/std.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:  # imported where used: only build_transform needs torchvision's transforms
    from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "tiny_cnn": (IMAGENET_MEAN, IMAGENET_STD),
}
TRANSFORMS = ("tensor", "timm")
SampleTransform = Callable[[Image.Image], Tensor]


def resolve_normalization(spec: str | Mapping[str, Sequence[float]] | None) -> tuple[tuple[float, ...], ...]:
    """``(mean, std)`` of 3 channels from a name (``imagenet``, ``inception``, ``none``), a timm model name (its
    pretrained configuration's mean/std) or a mapping ``{mean: [...], std: [...]}``."""
    if spec is None:
        spec = "imagenet"
    if isinstance(spec, str):
        if spec in NORMALIZATIONS:
            return NORMALIZATIONS[spec]
        import timm
        from timm.models import get_pretrained_cfg

        if not timm.is_model(spec):
            raise ValueError(f"data.normalization must be one of {sorted(NORMALIZATIONS)}, a timm model name or "
                             f"{{mean: [...], std: [...]}}, got {spec!r}")
        config = get_pretrained_cfg(spec)
        if config is None:
            return NORMALIZATIONS["imagenet"]
        return tuple(float(m) for m in config.mean), tuple(float(s) for s in config.std)
    mean, std = spec.get("mean"), spec.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"data.normalization needs 3 means and 3 positive stds, got {dict(spec)}")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class BatchTransform:
    """``uint8 [B, 3, H, W]`` -> ``float32`` normalised, with independent random flips per image when training.

    ``x = (u / 255 - mean) / std``, computed as one multiply-subtract; flips draw one Bernoulli(1/2) per image and
    axis from the transform's own CPU generator, which the training sampler re-seeds from ``(seed, epoch)`` at the
    start of every epoch, so a resumed run flips exactly as an uninterrupted one (with ``num_workers=0``; worker
    processes hold copies of it). Works on any device: the constants follow the images (copied once per device).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, hflip: bool = False,
                 vflip: bool = False) -> None:
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
        self.hflip = hflip
        self.vflip = vflip
        self.generator = torch.Generator().manual_seed(0)
        self._constants: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def reseed(self, seed: int) -> None:
        """Restart the flip sequence from ``seed``."""
        self.generator.manual_seed(seed % 2**63)

    def skip(self, batches: int, batch_size: int) -> None:
        """Advance the flip sequence past ``batches`` batches of ``batch_size`` images (a resume mid-epoch)."""
        for _ in range(batches):
            for enabled in (self.hflip, self.vflip):
                if enabled:
                    torch.rand(batch_size, generator=self.generator)

    def __call__(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            return images
        for enabled, dim in ((self.hflip, -1), (self.vflip, -2)):
            if enabled:
                flip = (torch.rand(images.shape[0], generator=self.generator) < 0.5).to(images.device)
                images = torch.where(flip.view(-1, 1, 1, 1), images.flip(dim), images)
        scale, shift = self._on(images.device)
        return images.to(torch.float32).mul_(scale).sub_(shift)

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._constants:
            self._constants[device] = (self.scale.to(device), self.shift.to(device))
        return self._constants[device]


def pil_to_uint8(image: Image.Image, image_size: int | None = None) -> Tensor:
    """RGB ``PIL`` image -> ``uint8 [3, S, S]`` (bilinear, antialiased resize when the size differs)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def uint8_to_pil(image: Tensor) -> Image.Image:
    """``uint8 [3, H, W]`` -> RGB ``PIL`` image (for per-sample transforms on cached images)."""
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def build_sample_transform(
    name: str, image_size: int, *, train: bool, mean: Sequence[float], std: Sequence[float],
    hflip: bool = False, vflip: bool = False, timm_kwargs: Mapping[str, Any] | None = None,
) -> SampleTransform | None:
    """Per-sample transform for ``name``: ``None`` for ``tensor`` (work happens per batch), timm's
    ``create_transform(input_size, is_training, mean, std, hflip, vflip, **timm_kwargs)`` for ``timm``."""
    if name == "tensor":
        return None
    if name != "timm":
        raise ValueError(f"data.transform must be one of {TRANSFORMS}, got {name!r}")
    from timm.data import create_transform

    kwargs = {"crop_pct": 1.0, **dict(timm_kwargs or {})}
    if train:
        kwargs.setdefault("hflip", 0.5 if hflip else 0.0)
        kwargs.setdefault("vflip", 0.5 if vflip else 0.0)
    return create_transform((3, image_size, image_size), is_training=train, mean=tuple(mean), std=tuple(std),
                            **kwargs)


def build_transform(
    image_size: int,
    *,
    train: bool,
    hflip: bool = True,
    vflip: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """A per-sample torchvision v2 pipeline (PIL -> normalised float tensor) equal to the default batched one:
    resize to ``image_size``, flips when training, normalise. For a custom ``train_transform`` starting point."""
    from torchvision.transforms import v2

    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)]
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip())
    if train and vflip:
        steps.append(v2.RandomVerticalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)
