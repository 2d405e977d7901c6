"""Feature extractors: any timm model by name, plus a tiny CNN for fast CPU runs.

Backbones return pooled features ``[B, num_features]``; the loss builds the head on top (its parametrization
decides the head's width), so the backbone never knows the number of classes. timm is imported on first use of a
timm name: importing it costs about 2.5 s of CPU (with W&B, which its utilities import), which a ``tiny_cnn`` run,
and every process that only reads the configs, need not pay.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyCNN(nn.Module):
    """A small conv net with global average pooling: trains on 48x48 images in minutes on a CPU.

    Each stage is conv-norm-ReLU followed by 2x2 max pooling (except the last, which has two convs); the pooled
    feature sum is a natural inductive bias for counting.
    """

    def __init__(self, in_chans: int = 3, width: int = 24, num_stages: int = 3, norm: str = "batch",
                 pool_grid: int = 1) -> None:
        super().__init__()
        if num_stages < 1 or width < 1:
            raise ValueError(f"TinyCNN: width and num_stages must be >= 1, got {width}, {num_stages}")
        if norm not in NORMS:
            raise ValueError(f"TinyCNN: norm must be one of {sorted(NORMS)}, got {norm!r}")
        if pool_grid < 1:
            raise ValueError(f"TinyCNN: pool_grid must be >= 1, got {pool_grid}")
        layers: list[nn.Module] = []
        channels = in_chans
        for stage in range(num_stages):
            out = width * 2**stage
            layers += _conv_norm_relu(channels, out, norm)
            layers += [nn.MaxPool2d(2)] if stage < num_stages - 1 else _conv_norm_relu(out, out, norm)
            channels = out
        self.features = nn.Sequential(*layers)
        # pool_grid=1: global average (position-free, a counting prior); g > 1 keeps a g x g grid of positions
        # (position-coded attributes, e.g. the embedded multi-label set's 8 x 8 cells)
        self.pool = nn.AdaptiveAvgPool2d(pool_grid)
        self.num_features = channels * pool_grid**2

    def forward(self, images: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.features(images)), 1)


#: the keyword arguments of ``TinyCNN`` a config may set (``model.backbone_kwargs``)
TINY_CNN_OPTIONS = ("width", "num_stages", "norm", "pool_grid")
#: ``batch`` (default), ``group`` (per-sample statistics: identical under any split of a batch across ranks)
NORMS = {"batch": nn.BatchNorm2d, "group": lambda c: nn.GroupNorm(min(8, c), c)}


def _conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), NORMS[norm](out_channels),
            nn.ReLU(inplace=True)]


def build_backbone(name: str, *, pretrained: bool = False, in_chans: int = 3, **kwargs: object) -> nn.Module:
    """``tiny_cnn`` or any ``timm.list_models()`` name, without a classifier (``num_classes=0``).

    Models whose pretrained configuration fixes the input size (ViT, DeiT, Swin, ...) are built with timm's
    ``dynamic_img_size`` and ``dynamic_img_pad`` (unless ``kwargs`` set them), so that they run on the data's own
    image size (a 28x28 image is padded to two 16-pixel patches a side) instead of failing on anything but 224.
    ``pretrained=True`` downloads weights through timm's hub; offline it fails with a message saying so.
    """
    if name == "tiny_cnn":
        if pretrained:
            raise ValueError("build_backbone: tiny_cnn has no pretrained weights; set model.pretrained=false")
        try:
            return TinyCNN(in_chans=in_chans, **kwargs)  # type: ignore[arg-type]
        except TypeError as error:
            raise ValueError(f"build_backbone: tiny_cnn takes backbone_kwargs {TINY_CNN_OPTIONS}, got "
                             f"{sorted(kwargs)} ({error})") from None
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:20]
        raise ValueError(
            f"build_backbone: timm does not know backbone {name!r}. Similar names: {close or 'none'}; "
            "see timm.list_models() for all, or use tiny_cnn"
        )
    config = get_pretrained_cfg(name)
    options = dict(kwargs)
    if config is not None and config.fixed_input_size:
        options = {"dynamic_img_size": True, "dynamic_img_pad": True, **options}
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **options)
    except TypeError as error:
        if options != kwargs and "dynamic_img" in str(error):  # a fixed-size model without the dynamic options
            return build_backbone(name, pretrained=pretrained, in_chans=in_chans, **kwargs)
        if not kwargs:
            raise
        raise ValueError(
            f"build_backbone: timm model {name!r} does not take model.backbone_kwargs {dict(kwargs)} ({error}). "
            f"These go to timm.create_model; tiny_cnn's options ({TINY_CNN_OPTIONS}) belong to model=tiny_cnn: "
            f"use model=timm model.backbone={name}"
        ) from None
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise RuntimeError(
            f"build_backbone: could not fetch pretrained weights for {name!r} ({error}). This machine may be "
            "offline: set model.pretrained=false, or place the weights in the HF/torch hub cache first."
        ) from error


def default_input_size(backbone: object) -> int | None:
    """The square input side a backbone was designed for: timm's pretrained ``input_size`` for a timm model name,
    ``None`` for ``tiny_cnn``, a module, or a config of one (they state none)."""
    if not isinstance(backbone, str) or backbone == "tiny_cnn":
        return None
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(backbone):
        return None
    config = get_pretrained_cfg(backbone)
    if config is None or config.input_size is None:
        return None
    return int(max(config.input_size[1:]))
