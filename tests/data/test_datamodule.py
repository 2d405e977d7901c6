"""TailDataModule: every config and task yields the batch contract; validation fails at setup; epochs reshuffle."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image
from torch import nn

from tailsweep.data.datamodule import TailDataModule
from tailsweep.data.manifest import ManifestError
from tailsweep.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from tailsweep.utils.paths import config_dir

from .conftest import SMALL_MULTILABEL

TARGETS = {  # task -> (dtype, trailing shape of the target given C)
    "ordinal": (torch.int64, lambda c: ()),
    "soft": (torch.float32, lambda c: (c,)),
    "multilabel": (torch.float32, lambda c: (c,)),
}


def _compose_data(name: str, data_dir: Path) -> TailDataModule:
    GlobalHydra.instance().clear()
    overrides = [f"data={name}", f"paths.data_dir={data_dir}", "data.batch_size=8", "data.eval_batch_size=8"]
    if name == "multilabel":
        overrides.append(f"data.num_classes={SMALL_MULTILABEL.num_labels}")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    return instantiate(cfg.data)


@pytest.mark.parametrize("name", ["counting", "multilabel", "multilabel4", "soft"])
def test_every_data_config_gives_the_batch_contract(name: str, counting_root: Path,
                                                    generated_roots: dict[str, Path]) -> None:
    data_dir = counting_root.parent if name == "counting" else generated_roots[name].parent
    datamodule = _compose_data(name, data_dir)
    datamodule.setup("fit")
    statistics = datamodule.statistics
    assert statistics.task == datamodule.task and statistics.num_classes == datamodule.num_classes
    assert statistics.num_samples == len(datamodule.split("train"))
    dtype, shape = TARGETS[datamodule.task if datamodule.task in TARGETS else "ordinal"]
    size = datamodule.image_size
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"image", "target", "group_id", "index"}
        assert batch["image"].dtype == torch.float32 and batch["image"].shape == (8, 3, size, size)
        assert batch["target"].dtype == dtype and batch["target"].shape == (8, *shape(datamodule.num_classes))
        assert batch["group_id"].dtype == torch.int64 and batch["index"].dtype == torch.int64
    if datamodule.task == "soft":
        torch.testing.assert_close(batch["target"].sum(1), torch.ones(8))
    if datamodule.task == "multilabel":
        assert set(batch["target"].unique().tolist()) <= {-1.0, 0.0, 1.0}
    datamodule.setup("test")
    assert len(datamodule.test_dataloader().dataset) == len(datamodule.split("test"))


def test_eval_images_are_normalised_exactly_and_train_images_flipped(counting_root: Path) -> None:
    datamodule = TailDataModule(str(counting_root / "manifest.csv"), task="ordinal", num_classes=30, image_size=24,
                                batch_size=64, hflip=True, vflip=True)
    datamodule.setup("fit")
    dataset = datamodule.dataset("val")
    batch = next(iter(datamodule.val_dataloader()))
    raw = torch.stack([dataset.decode(i) for i in batch["index"].tolist()]).double() / 255
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(batch["image"].double(), (raw - mean) / std, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    train = next(iter(datamodule.train_dataloader()))
    raw = torch.stack([datamodule.dataset("train").decode(i) for i in train["index"].tolist()]).double() / 255
    variants = torch.stack([(v - mean) / std for v in (raw, raw.flip(-1), raw.flip(-2), raw.flip(-1, -2))])
    matches = ((variants - train["image"].double()).abs().amax((2, 3, 4)) < 1e-5)  # [4 variants, B]
    assert matches.any(0).all()  # every image is one of its flips
    assert matches[0].sum() < len(train["index"])  # and some are flipped


def test_cache_and_file_reads_agree_and_timm_transform(counting_root: Path) -> None:
    kwargs = {"manifest": str(counting_root / "manifest.csv"), "task": "ordinal", "num_classes": 30,
              "image_size": 20, "eval_batch_size": 20}
    batches = []
    for cache in (True, False):
        datamodule = TailDataModule(cache_images=cache, **kwargs)
        datamodule.setup("validate")
        batches.append(next(iter(datamodule.val_dataloader())))
    torch.testing.assert_close(batches[0]["image"], batches[1]["image"])
    timm = TailDataModule(transform="timm", normalization="resnet18", **kwargs)
    timm.setup("validate")
    assert next(iter(timm.val_dataloader()))["image"].shape == (20, 3, 20, 20)
    # a torchvision v2 pipeline (as Hydra would build it) replaces the default per sample
    custom = TailDataModule(eval_transform=build_transform(20, train=False), **kwargs)
    custom.setup("validate")
    torch.testing.assert_close(next(iter(custom.val_dataloader()))["image"], batches[0]["image"], atol=1e-5, rtol=0)


def test_device_transforms_match_loader_transforms(counting_root: Path) -> None:
    kwargs = {"manifest": str(counting_root / "manifest.csv"), "task": "ordinal", "num_classes": 30,
              "image_size": 16, "eval_batch_size": 20}
    on_device, in_loader = TailDataModule(device_transforms=True, **kwargs), TailDataModule(**kwargs)
    batch = next(iter(on_device.val_dataloader()))
    assert batch["image"].dtype == torch.uint8
    moved = on_device.on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(moved["image"], next(iter(in_loader.val_dataloader()))["image"])


def test_weighted_loader_balances_classes(counting_root: Path) -> None:
    datamodule = TailDataModule(str(counting_root / "manifest.csv"), task="ordinal", num_classes=30,
                                image_size=16, batch_size=100,
                                sampler={"scheme": "explicit", "explicit": [1.0] * 15 + [0.0] * 15,
                                         "num_samples": 3000})
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert len(loader) == 30
    targets = torch.cat([b["target"] for b in loader])
    assert targets.numel() == 3000 and int(targets.max()) < 15  # zero-weighted classes are never drawn


def test_single_process_training_reshuffles_each_epoch(counting_root: Path) -> None:
    """Lightning calls set_epoch on our sampler although it does not wrap it: epochs differ, and match the
    sampler's sequence of that epoch (so a resumed run draws the same)."""
    datamodule = TailDataModule(str(counting_root / "manifest.csv"), task="ordinal", num_classes=30, image_size=16,
                                batch_size=32, device_transforms=True)
    seen: dict[str, list] = {"train": [], "val": []}

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 30)

        def training_step(self, batch, batch_idx):
            assert batch["image"].dtype == torch.float32  # normalised after the transfer
            seen["train"].append((self.current_epoch, batch["index"]))
            return self.layer(batch["image"].mean((2, 3))).logsumexp(1).mean()

        def validation_step(self, batch, batch_idx):
            seen["val"].append((self.current_epoch, batch["index"]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        num_sanity_val_steps=0)
    trainer.fit(Recorder(), datamodule=datamodule)
    epochs = [torch.cat([i for e, i in seen["train"] if e == epoch]).numpy() for epoch in (0, 1)]
    assert not np.array_equal(epochs[0], epochs[1])
    reference = datamodule.train_sampler()
    for epoch in (0, 1):
        expected = reference.indices(epoch)[: len(epochs[epoch])]
        np.testing.assert_array_equal(epochs[epoch], expected)
    validation = torch.cat([i for e, i in seen["val"] if e == 0]).numpy()
    assert sorted(validation.tolist()) == list(range(len(datamodule.split("val"))))


def test_setup_errors_come_before_training(write_manifest, tmp_path: Path) -> None:
    rows = [(f"img/{k}.png", k % 2, "train" if k < 8 else "val") for k in range(12)]
    path = write_manifest(("path", "label", "split"), rows)
    with pytest.raises(ManifestError, match=r"split 'test' has no rows .*'test': 0"):
        TailDataModule(str(path), num_classes=2).setup("fit")
    rows = [(f"img/{k}.png", 2 * (k % 2), "train" if k < 6 else "val" if k < 9 else "test") for k in range(12)]
    path = write_manifest(("path", "label", "split"), rows)
    with pytest.raises(ValueError, match=r"data.sampler: .*scheme 'inverse' .*class\(es\) \[1\]"):
        TailDataModule(str(path), num_classes=3, sampler={"scheme": "inverse"}).setup("fit")
    with pytest.raises(ValueError, match="weight_column"):
        TailDataModule(str(path), num_classes=3, sampler={"scheme": "weights"}).setup("fit")
    with pytest.raises(ManifestError, match=r"tailsweep-generate soft --root"):
        TailDataModule(str(tmp_path / "nowhere" / "manifest.csv"), task="soft", generator="soft").setup("fit")
    with pytest.raises(ValueError, match="transform must be one of"):
        TailDataModule(str(path), transform="albumentations")
    with pytest.raises(ValueError, match="normalization must be one of"):
        TailDataModule(str(path), normalization="no_such_model_name")


# ------------------------------------------------------------------------------------ values set to auto
def _images(root: Path, sizes: list[tuple[int, int]]) -> list[str]:
    (root / "img").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for k, (width, height) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)).save(root / "img" / f"{k}.png")
        names.append(f"img/{k}.png")
    return names


def _manifest(root: Path, sizes: list[tuple[int, int]], labels: list[int]) -> Path:
    names = _images(root, sizes)
    splits = ["train" if k % 4 < 2 else "val" if k % 4 == 2 else "test" for k in range(len(names))]
    path = root / "labels.csv"
    rows = zip(names, labels, splits, strict=True)
    path.write_text("path,label,split\n" + "".join(f"{n},{y},{s}\n" for n, y, s in rows))
    return path


def test_native_image_size_is_the_images_own_median_and_capped(tmp_path: Path, caplog) -> None:
    same = _manifest(tmp_path, [(20, 20)] * 12, [k % 3 for k in range(12)])
    datamodule = TailDataModule(str(same), image_size="native", batch_size=4)
    with caplog.at_level(logging.INFO, logger="tailsweep.data.datamodule"):
        datamodule.setup("fit")
    assert datamodule.image_size == 20 and next(iter(datamodule.val_dataloader()))["image"].shape[-1] == 20
    assert "task multiclass (labels are class indices; no loss given), 3 classes (labels 0..2), images 20x20 -> " \
           "image_size 20" in caplog.text
    mixed = _manifest(tmp_path, [(12, 12), (30, 20), (16, 16), (40, 40)] * 3, [k % 3 for k in range(12)])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tailsweep.data.datamodule"):
        TailDataModule(str(mixed), image_size="native", batch_size=4).setup("validate")
    # training rows 0, 1, 4, 5, 8, 9: sides 12 and 30 -> median 21
    assert "images of 2 sizes (12x12..30x20, median side 21) -> image_size 21" in caplog.text
    capped = TailDataModule(str(mixed), image_size="native", batch_size=4, hints={"input_size": 16})
    capped.setup("validate")
    assert capped.image_size == 16


def test_task_follows_the_loss_and_empty_classes_are_named(tmp_path: Path, caplog) -> None:
    path = _manifest(tmp_path, [(8, 8)] * 12, [(0, 1, 3)[k % 3] for k in range(12)])
    datamodule = TailDataModule(str(path), num_classes="auto", batch_size=4, class_names=["a", "b", "c", "d"],
                                hints={"loss_tasks": ["ordinal"], "loss": "corn"})
    with caplog.at_level(logging.INFO, logger="tailsweep.data.datamodule"):
        datamodule.setup("fit")
    assert datamodule.task == "ordinal" and datamodule.num_classes == 4
    assert "task ordinal (from loss corn), 4 classes (a, b, c, d)" in caplog.text
    assert "1 class(es) without a sample in the training split: 2 (c)" in caplog.text


def test_auto_workers_and_pin_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _manifest(tmp_path, [(8, 8)] * 12, [k % 2 for k in range(12)])
    for cores, cache, workers in [(1, False, 0), (2, False, 1), (16, False, 8), (4, True, 0)]:
        monkeypatch.setattr("tailsweep.data.datamodule.available_cores", lambda cores=cores: cores)
        assert TailDataModule(str(path), num_workers="auto", cache_images=cache).num_workers == workers
    datamodule = TailDataModule(str(path), pin_memory="auto", batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DataLoader warns when pin_memory=True finds no accelerator
        next(iter(datamodule.val_dataloader()))
    assert datamodule._pin_memory() == torch.cuda.is_available()


def test_root_is_an_image_folder_and_one_source_is_required(tmp_path: Path) -> None:
    for k, name in enumerate(("b", "a")):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (10, 10), (40 * k, 0, 0)).save(tmp_path / "tree" / name / f"{i}.png")
    datamodule = TailDataModule(root=str(tmp_path / "tree"), image_size="native", batch_size=2)
    datamodule.setup("fit")
    assert datamodule.class_names == ("a", "b") and datamodule.image_size == 10
    with pytest.raises(ValueError, match=r"give one of data\.manifest .* and data\.root"):
        TailDataModule(manifest="x.csv", root=str(tmp_path / "tree"))
    with pytest.raises(ManifestError, match=r"image folder .*nowhere does not exist: point data.root"):
        TailDataModule(root=str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(ManifestError, match=r"data.reader has unknown option\(s\) \['label_colum'\]"):
        TailDataModule(root=str(tmp_path / "tree"), reader={"label_colum": "y"})
