"""The decoded-image cache on disk (``data.cache_dir``): reused by a later setup without decoding, invalidated by a
changed image or manifest row, written atomically by concurrent writers, and giving the in-memory cache's tensors."""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tailsweep.data import cache as cache_module
from tailsweep.data import datasets
from tailsweep.data.cache import DiskImageCache
from tailsweep.data.datamodule import TailDataModule
from tailsweep.data.manifest import SPLITS, ManifestError, read_manifest

SPLIT_OF_ROW = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
LOAD_IMAGE = datasets.load_image


@pytest.fixture
def image_set(tmp_path: Path) -> Path:
    """``img/<k>.png`` (12 random 8x8 images, 3 more spare) and ``manifest.csv`` listing the first 12."""
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    for k in range(15):
        Image.fromarray(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{k}.png")
    write_rows(tmp_path, [[f"img/{k}.png", k % 3, SPLIT_OF_ROW[k]] for k in range(12)])
    return tmp_path


def write_rows(root: Path, rows: list[list[object]]) -> Path:
    path = root / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return path


def datamodule(root: Path, cache_dir: Path | None, **kwargs: object) -> TailDataModule:
    module = TailDataModule(str(root / "manifest.csv"), num_classes=3, image_size=8, batch_size=4,
                            cache_images=True, cache_dir=None if cache_dir is None else str(cache_dir), **kwargs)
    module.setup("fit")
    return module


class DecodeCounter:
    """``datasets.load_image`` that counts its calls (or refuses them)."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls = 0
        self.refuse = refuse

    def __call__(self, *args: object, **kwargs: object):
        self.calls += 1
        if self.refuse:
            raise AssertionError("an image was decoded although the cache holds it")
        return LOAD_IMAGE(*args, **kwargs)


def images_of(module: TailDataModule) -> dict[str, torch.Tensor]:
    return {split: module.dataset(split).images.clone() for split in SPLITS}


def npy_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npy"))


def test_disk_cache_gives_the_in_memory_tensors_and_a_second_setup_decodes_nothing(
        image_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_memory = datamodule(image_set, None)
    memory = images_of(in_memory)
    expected = next(iter(in_memory.val_dataloader()))
    first = datamodule(image_set, tmp_path / "cache")
    assert len(npy_files(tmp_path / "cache")) == 3  # one file a split
    monkeypatch.setattr(datasets, "load_image", DecodeCounter(refuse=True))
    second = datamodule(image_set, tmp_path / "cache")
    for split in SPLITS:
        for module in (first, second):
            images = module.dataset(split).images
            assert images.dtype == torch.uint8 and images.shape == memory[split].shape
            assert torch.equal(images, memory[split])
        assert second.dataset(split).cache_file == first.dataset(split).cache_file
        assert second.dataset(split).cache_file.name.startswith(f"manifest-{split}-8px-")
    # the batches are those of the in-memory cache, to the bit
    batch = next(iter(second.val_dataloader()))
    assert torch.equal(batch["image"], expected["image"])


def test_a_changed_image_invalidates_its_split_only(image_set: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir = tmp_path / "cache"
    first = datamodule(image_set, cache_dir)
    before = images_of(first)
    old_files = {split: first.dataset(split).cache_file.name for split in SPLITS}
    changed = np.full((8, 8, 3), 7, dtype=np.uint8)
    Image.fromarray(changed).save(image_set / "img" / "7.png")  # row 7: the second val image
    stat = os.stat(image_set / "img" / "7.png")
    os.utime(image_set / "img" / "7.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    counter = DecodeCounter()
    monkeypatch.setattr(datasets, "load_image", counter)
    after = datamodule(image_set, cache_dir)
    assert counter.calls == 3  # the val split's three images; train and test are reused
    assert torch.equal(after.dataset("val").images[1], torch.from_numpy(changed).permute(2, 0, 1))
    assert torch.equal(after.dataset("val").images[0], before["val"][0])
    for split in ("train", "test"):
        assert after.dataset(split).cache_file.name == old_files[split]
    assert after.dataset("val").cache_file.name != old_files["val"]
    assert not (cache_dir / old_files["val"]).exists()  # the stale file is pruned
    assert len(npy_files(cache_dir)) == 3


def test_a_changed_manifest_row_invalidates_and_a_relabelled_row_reuses(image_set: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir = tmp_path / "cache"
    datamodule(image_set, cache_dir)
    rows = [[f"img/{k}.png", k % 3, SPLIT_OF_ROW[k]] for k in range(12)]
    rows[2][1] = (rows[2][1] + 1) % 3  # a new label: the pixels are the same
    write_rows(image_set, rows)
    monkeypatch.setattr(datasets, "load_image", DecodeCounter(refuse=True))
    relabelled = datamodule(image_set, cache_dir)
    assert int(relabelled.dataset("train").targets[2]) == rows[2][1]

    rows[2][0] = "img/13.png"  # the row now points at another image
    write_rows(image_set, rows)
    counter = DecodeCounter()
    monkeypatch.setattr(datasets, "load_image", counter)
    moved = datamodule(image_set, cache_dir)
    assert counter.calls == 6  # the train split is decoded again
    expected = torch.from_numpy(np.array(Image.open(image_set / "img" / "13.png").convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(moved.dataset("train").images[2], expected)


def test_a_corrupt_image_after_the_cache_was_written_still_fails_in_setup_naming_row_and_file(
        image_set: Path, tmp_path: Path) -> None:
    datamodule(image_set, tmp_path / "cache")
    (image_set / "img" / "4.png").write_bytes(b"<html>not found</html>")
    with pytest.raises(ManifestError, match=r"row 6: image file .*4\.png cannot be decoded"):
        datamodule(image_set, tmp_path / "cache")
    (image_set / "img" / "4.png").unlink()
    with pytest.raises(ManifestError, match=r"row 6: image file .*4\.png does not exist"):
        datamodule(image_set, tmp_path / "cache", reader={"check_files": False})


def test_cache_max_gb_still_applies(image_set: Path, tmp_path: Path) -> None:
    module = datamodule(image_set, tmp_path / "cache", cache_max_gb=1e-9)
    assert module.dataset("train").images is None and not (tmp_path / "cache").exists()


def test_an_unwritable_cache_dir_or_a_damaged_file_falls_back_to_decoding(
        image_set: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    memory = images_of(datamodule(image_set, None))
    (tmp_path / "a_file").write_text("")
    with caplog.at_level(logging.WARNING):
        module = datamodule(image_set, tmp_path / "a_file" / "cache")
    assert "cannot be created" in caplog.text and module.dataset("train").cache_file is None
    assert torch.equal(module.dataset("train").images, memory["train"])

    path = datamodule(image_set, tmp_path / "cache").dataset("train").cache_file
    path.write_bytes(path.read_bytes()[:200])  # cut short
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = datamodule(image_set, tmp_path / "cache")
    assert "decoding the images again" in caplog.text
    assert torch.equal(again.dataset("train").images, memory["train"])
    assert np.load(path, mmap_mode="r").shape == memory["train"].shape  # rewritten whole


def test_a_pickled_dataset_maps_the_file_again(image_set: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader worker (or a spawned rank) gets the file's name, not the pixels, and maps the file without
    stating every image again; when the file has gone it falls back to the keyed lookup."""
    dataset = datamodule(image_set, tmp_path / "cache").dataset("train")
    payload = pickle.dumps(dataset)
    assert dataset.images.numel() > 0 and dataset.images.numpy().tobytes() not in payload
    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "file_states", lambda manifest: pytest.fail("the key was recomputed"))
        copy = pickle.loads(payload)
    assert copy.cache_file == dataset.cache_file and torch.equal(copy.images, dataset.images)
    dataset.cache_file.unlink()
    again = pickle.loads(payload)
    assert again.cache_file == dataset.cache_file and dataset.cache_file.exists()  # decoded and written again
    assert torch.equal(again.images, dataset.images)


# ------------------------------------------------------------------------------------------ concurrent writers
def _write_concurrently(manifest_path: str, cache_dir: str, log_dir: str, start_at: float, locks: bool) -> None:
    """One writer process: decode (slowly, so that the writers overlap) and write into the cache."""
    if not locks:
        cache_module.fcntl = None
    manifest = read_manifest(manifest_path, num_classes=3).select("train")
    dataset = datasets.ManifestImageDataset(manifest, image_size=8, cache=False)

    def slow_decode() -> torch.Tensor:
        with open(Path(log_dir) / f"decode-{os.getpid()}", "w"):
            pass
        time.sleep(0.5)
        return dataset._decode_all(1)

    time.sleep(max(0.0, start_at - time.time()))
    images, _ = DiskImageCache(cache_dir).images(manifest, 8, slow_decode)
    np.save(Path(log_dir) / f"result-{os.getpid()}.npy", images.numpy())


@pytest.mark.parametrize("locks", [True, False], ids=["flock", "rename_only"])
def test_two_concurrent_writers_leave_one_complete_file(image_set: Path, tmp_path: Path, locks: bool) -> None:
    """With the lock the second writer waits and maps the first one's file (one decode); without it both decode
    and both renames land a complete file. Either way no temporary file is left and every reader gets the pixels."""
    cache_dir, log_dir = tmp_path / "cache", tmp_path / "log"
    log_dir.mkdir()
    context = multiprocessing.get_context("fork")
    start_at = time.time() + 0.5
    writers = [context.Process(target=_write_concurrently,
                               args=(str(image_set / "manifest.csv"), str(cache_dir), str(log_dir), start_at, locks))
               for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    decodes = len(list(log_dir.glob("decode-*")))
    assert decodes == (1 if locks else 2)
    assert [p.name for p in cache_dir.iterdir() if ".tmp-" in p.name] == []
    (written,) = npy_files(cache_dir)
    expected = datamodule(image_set, None).dataset("train").images.numpy()
    assert np.array_equal(np.load(written), expected)
    for result in log_dir.glob("result-*.npy"):
        assert np.array_equal(np.load(result), expected)


def test_the_configs_put_the_cache_under_the_data_dir(compose_train) -> None:
    cfg = compose_train()
    assert Path(cfg.data.cache_dir) == Path(cfg.paths.data_dir) / ".cache" / "images"
