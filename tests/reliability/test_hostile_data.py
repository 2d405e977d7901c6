"""The manifest reader and the datamodule fed hostile manifests and files: label cells of any text (strings, floats,
NaN, unicode digits), soft rows that are not distributions, multi-hot and weight cells of any text, duplicate
paths, non-image files, truncated PNG and JPEG files, directories, CSV files that are not UTF-8 or not CSV. Each
gives the right targets or a ManifestError naming the manifest, the row, the column and the value; and a bad
manifest fails in setup(), before anything is written into the run directory."""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tailsweep.data.datamodule import TailDataModule
from tailsweep.data.datasets import ManifestImageDataset
from tailsweep.data.manifest import ManifestError, read_manifest
from tailsweep.train import train
from tailsweep.utils.runtime import FAILURE_FILE, run_task
from tests.reliability.hostile import HOSTILE, clear_error

SPLITS = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
ROW = 3  # the hostile row: CSV line 5 (the header is line 1)
#: Cell text: anything a spreadsheet may hold (no surrogates: the file is UTF-8).
CELL = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
    st.sampled_from([" 1 ", "1.0", "1e0", "-0", "2", "-1", "nan", "inf", "-inf", "0x1", "\u0661", "1_0", "True", "",
                     "None", "\u00a01"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers(-3, 5).map(str),
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``img/<k>.png`` (12 random 8x8 images) and hostile files beside them."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    for k in range(12):
        Image.fromarray(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).save(root / "img" / f"{k}.png")
        Image.fromarray(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)).save(root / "img" / f"{k}.jpg")
    return root


def write(root: Path, header: list[str], rows: list[list[object]], name: str = "manifest.csv") -> Path:
    path = root / name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def base_rows() -> list[list[object]]:
    return [[f"img/{k}.png", k % 3, SPLITS[k]] for k in range(12)]


def parse_label(text: str) -> int | None:
    """What a label cell means (Python's int, or an integral float such as "1.0"), None when it is no integer."""
    try:
        return int(text.strip())
    except ValueError:
        try:
            number = float(text.strip())
        except ValueError:
            return None
        return int(number) if math.isfinite(number) and number.is_integer() else None


@HOSTILE
@given(cell=CELL)
def test_any_label_cell_is_a_class_index_or_named(images: Path, cell: str) -> None:
    rows = base_rows()
    rows[ROW][1] = cell
    path = write(images, ["path", "label", "split"], rows, "labels.csv")
    label = parse_label(cell)
    if label is not None and 0 <= label < 3:
        assert int(read_manifest(path, num_classes=3).targets[ROW]) == label
    else:
        clear_error(lambda: read_manifest(path, num_classes=3), "labels.csv", "row 5", "label")


@HOSTILE
@given(cell=st.one_of(CELL, st.sampled_from(["cat", " dog ", "Cat", "fox|cat"])))
def test_labels_as_names_are_known_names_or_named(images: Path, cell: str) -> None:
    names = ["cat", "dog", "fox"]
    rows = base_rows()
    for row in rows:
        row[1] = names[row[1]]
    rows[ROW][1] = cell
    path = write(images, ["path", "label", "split"], rows, "names.csv")
    if cell.strip() in names:
        assert int(read_manifest(path, class_names=names).targets[ROW]) == names.index(cell.strip())
    else:
        clear_error(lambda: read_manifest(path, class_names=names), "row 5", "label", "known label name")


@HOSTILE
@given(cells=st.lists(st.one_of(CELL, st.floats(-0.5, 1.5).map(str)), min_size=3, max_size=3))
def test_soft_rows_are_distributions_or_named(images: Path, cells: list[str]) -> None:
    rows = [[f"img/{k}.png", 0.2, 0.3, 0.5, SPLITS[k]] for k in range(12)]
    rows[ROW][1:4] = cells
    path = write(images, ["path", "p_a", "p_b", "p_c", "split"], rows, "soft.csv")
    try:
        numbers = np.array([float(c) for c in cells])
    except ValueError:
        numbers = None
    valid = numbers is not None and bool(np.isfinite(numbers).all() and (numbers >= 0).all()
                                         and (numbers <= 1 + 1e-3).all() and abs(numbers.sum() - 1) <= 1e-3)
    if valid:
        targets = read_manifest(path, task="soft", label_columns="p_*").targets
        assert torch.isfinite(targets).all() and (targets >= 0).all()
        torch.testing.assert_close(targets.sum(-1), torch.ones(12), atol=1e-6, rtol=0)
    else:
        clear_error(lambda: read_manifest(path, task="soft", label_columns="p_*"), "soft.csv", "row 5")


@HOSTILE
@given(cell=CELL)
def test_any_multihot_cell_is_one_zero_unknown_or_named(images: Path, cell: str) -> None:
    rows = [[f"img/{k}.png", 1, 0, SPLITS[k]] for k in range(12)]
    rows[ROW][2] = cell
    path = write(images, ["path", "attr_a", "attr_b", "split"], rows, "multihot.csv")
    meaning = {"1": 1, "0": 0, "-1": -1, "": -1, "1.0": 1, "0.0": 0, "-1.0": -1, "true": 1, "false": 0,
               "nan": -1, "none": -1}.get(cell.strip().lower())
    if meaning is not None:
        assert int(read_manifest(path, task="multilabel", label_columns="attr_*").targets[ROW, 1]) == meaning
    else:
        clear_error(lambda: read_manifest(path, task="multilabel", label_columns="attr_*"), "row 5", "attr_b")


@HOSTILE
@given(cell=CELL, others=st.sampled_from([0.0, 1.0]))
def test_any_weight_cell_is_a_weight_or_named(images: Path, cell: str, others: float) -> None:
    rows = [[*row, others] for row in base_rows()]
    rows[ROW][3] = cell
    path = write(images, ["path", "label", "split", "w"], rows, "weights.csv")
    try:
        weight = float(cell.strip())
    except ValueError:
        weight = None
    if weight is not None and math.isfinite(weight) and weight >= 0 and (weight > 0 or others > 0):
        assert float(read_manifest(path, num_classes=3, weight_column="w").weights[ROW]) == weight
    else:
        clear_error(lambda: read_manifest(path, num_classes=3, weight_column="w"), "weights.csv", "w")


def int64_or_none(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if -(2**63) <= value < 2**63 else None


@HOSTILE
@given(cells=st.lists(st.one_of(CELL, st.sampled_from(["1", "01", "99999999999999999999", "9223372036854775807"])),
                      min_size=12, max_size=12))
def test_any_group_cells_give_int64_ids_and_groups_never_straddle_splits(images: Path, cells: list[str]) -> None:
    """Integer ids are kept when every cell is one (an id beyond int64 makes them all names: it used to
    overflow); otherwise each distinct text is a group; an empty cell is a group of its own. Without a split
    column whole groups go to one split."""
    rows = [[f"img/{k}.png", k % 3, cell] for k, cell in enumerate(cells)]
    manifest = read_manifest(write(images, ["path", "label", "group_id"], rows, "groups.csv"), num_classes=3)
    ids = manifest.group_ids.tolist()
    assert manifest.group_ids.dtype == torch.int64 and len(ids) == 12
    texts = [cell.strip() for cell in cells]
    numeric = all(int64_or_none(text) is not None for text in texts if text) and (
        "" not in texts or max((int64_or_none(t) for t in texts if t), default=0) < 2**63 - texts.count(""))
    keys = [(int64_or_none(text) if numeric else text) if text else ("own", k) for k, text in enumerate(texts)]
    for i in range(12):
        for j in range(12):
            assert (ids[i] == ids[j]) == (keys[i] == keys[j]), (cells[i], cells[j])
            if ids[i] == ids[j]:
                assert manifest.splits[i] == manifest.splits[j]


SPELLINGS = {"same": lambda p: p, "dot": lambda p: f"./{p}", "spaces": lambda p: f" {p} ",
             "parent": lambda p: p.replace("img/", "img/../img/"), "double slash": lambda p: p.replace("/", "//")}


@HOSTILE
@given(pair=st.lists(st.integers(0, 11), min_size=2, max_size=2, unique=True),
       spelling=st.sampled_from(sorted(SPELLINGS)))
def test_duplicate_paths_are_named_with_both_rows(images: Path, pair: list[int], spelling: str) -> None:
    """An image listed twice leaks between splits (or, in one split, tells the model that each row's other
    labels are absent): refused, however the path is spelled."""
    first, second = sorted(pair)
    rows = base_rows()
    rows[second][0] = SPELLINGS[spelling](rows[first][0])
    path = write(images, ["path", "label", "split"], rows, "duplicates.csv")
    clear_error(lambda: read_manifest(path, num_classes=3), "duplicates.csv",
                f"rows {first + 2} and {second + 2}", match="twice")


def hostile_file(images: Path, kind: str) -> str:
    """A file (relative path) that is not a usable image."""
    good = (images / "img" / "0.png").read_bytes()
    target = images / "bad" / f"{kind}.png"
    target.parent.mkdir(exist_ok=True)
    if kind == "text":
        target.write_text("<html>404 not found</html>")
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "signature only":
        target.write_bytes(good[:8])
    elif kind == "half a png":
        target.write_bytes(good[: len(good) // 2])
    elif kind == "png without its end":
        target.write_bytes(good[:-12])
    elif kind == "half a jpeg":
        jpeg = (images / "img" / "0.jpg").read_bytes()
        target = target.with_suffix(".jpg")
        target.write_bytes(jpeg[: len(jpeg) - 40])
    elif kind == "a directory":
        target = images / "bad" / "folder.png"
        target.mkdir(exist_ok=True)
    elif kind == "a text file":
        target = target.with_suffix(".txt")
        target.write_text("notes")
    elif kind == "missing":
        target = images / "bad" / "missing.png"
    return str(target.relative_to(images))


BAD_FILES = ["text", "empty", "signature only", "half a png", "png without its end", "half a jpeg", "a directory",
             "a text file", "missing"]


@pytest.mark.parametrize("kind", BAD_FILES)
@pytest.mark.parametrize("cache", [True, "disk", False])
@pytest.mark.parametrize("row", [1, 7, 10])  # a train, a val and a test row
def test_bad_image_files_fail_in_setup_naming_row_and_file(images: Path, kind: str, cache: bool | str,
                                                           row: int) -> None:
    """Cached splits are decoded at setup (fit: train, val and test), in memory or into the disk cache (whose
    other splits' files earlier cases wrote); others have every header read and PNG checksums verified. A JPEG
    cut short after a valid header is the one file that can pass an uncached setup: it fails at its first decode,
    naming the row, never with an unrelated error."""
    rows = base_rows()
    rows[row][0] = hostile_file(images, kind)
    path = write(images, ["path", "label", "split"], rows, f"files_{row}_{cache}.csv")
    datamodule = TailDataModule(str(path), num_classes=3, image_size=8, batch_size=4, cache_images=bool(cache),
                                cache_dir=str(images / ".cache") if cache == "disk" else None)
    where = f"row {row + 2}"
    try:
        datamodule.setup("fit")
    except ManifestError as error:
        assert where in str(error) and rows[row][0].split("/")[-1] in str(error), error
        return
    split = SPLITS[row]
    dataset = datamodule.dataset(split)
    index = [k for k in range(12) if SPLITS[k] == split].index(row)
    if kind == "png without its end" and cache:  # the pixels are all there: it decodes to the original image
        original = read_manifest(write(images, ["path", "label", "split"], base_rows(), "original.csv"),
                                 num_classes=3).select("train")  # row 0, img/0.png, the damaged file's source
        assert torch.equal(dataset.decode(index), ManifestImageDataset(original, image_size=8).decode(0))
        return
    assert kind == "half a jpeg" and not cache, f"{kind} passed setup"
    clear_error(lambda: dataset[index], where, "cannot be decoded")


@pytest.mark.parametrize(("content", "match"), [
    (b"\xef\xbb\xbfpath,label,split\n" + b"".join(f"img/{k}.png,{k % 3},{s}\n".encode() for k, s in
                                                     enumerate(SPLITS)), None),  # a BOM (Excel's CSV UTF-8) reads
    ("path,label,split\nimg/0.png,caf\xe9,train\n".encode("latin-1"), "expected UTF-8 text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "expected UTF-8 text"),
    (b"path,label,label,split\nimg/0.png,0,1,train\n", "expected one column named 'label'"),
    (b"path,label,split\nimg/0.png,0\n", "expected 3 cells"),
    (b"", "empty"),
    (b"path,label,split\n", "no rows"),
    (b"path,label,split\n,0,train\n", "row 2: path must be an image path, got an empty cell"),
    (b"path;label;split\nimg/0.png;0;train\n", "missing column 'path'"),
])
def test_files_that_are_no_usable_csv_are_named(images: Path, content: bytes, match: str | None) -> None:
    path = images / "raw.csv"
    path.write_bytes(content)
    if match is None:
        assert read_manifest(path, num_classes=3).targets.tolist() == [k % 3 for k in range(12)]
    else:
        clear_error(lambda: read_manifest(path, num_classes=3), "raw.csv", match=match)


# ------------------------------------------------------------------------------------------ the run directory
@pytest.fixture
def bad_counting(counting_root: Path, tmp_path: Path) -> Path:
    """A copy of the session's counting set, to be damaged by the test."""
    copy = tmp_path / "counting_copy"
    shutil.copytree(counting_root, copy)
    return copy


def damage(root: Path, split: str, how: str) -> str:
    """Break the first image of ``split`` in the counting copy; returns its manifest row number."""
    with (root / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    index = next(i for i, row in enumerate(rows) if row["split"] == split)
    image = root / rows[index]["path"]
    data = image.read_bytes()
    image.write_bytes(b"not an image" if how == "text" else data[: len(data) // 2])
    return f"row {index + 2}"


@pytest.mark.parametrize(("split", "how", "cache"), [("train", "text", False), ("test", "truncated", True),
                                                     ("val", "truncated", False)])
def test_a_bad_manifest_fails_in_setup_and_writes_nothing_but_the_failure(compose_train, bad_counting: Path,
                                                                          split: str, how: str, cache: bool) -> None:
    """No checkpoint, metrics, logs or pictures: only failure.json, which says what failed."""
    where = damage(bad_counting, split, how)
    cfg = compose_train([f"data.manifest={bad_counting / 'manifest.csv'}", f"data.cache_images={cache}"])
    run_dir = Path(cfg.paths.output_dir)
    with pytest.raises(ManifestError, match=where):
        run_task(train, cfg)
    assert sorted(p.name for p in run_dir.iterdir()) == [FAILURE_FILE]
    assert where in (run_dir / FAILURE_FILE).read_text()


def test_a_bad_sampler_config_fails_before_the_run_directory_is_used(compose_train) -> None:
    cfg = compose_train(["data.sampler.num_samples=2.5"])
    run_dir = Path(cfg.paths.output_dir)
    with pytest.raises(InstantiationException, match=r"num_samples must be >= 1 \(an integer\) or null, got 2.5"):
        run_task(train, cfg)
    assert sorted(p.name for p in run_dir.iterdir()) == [FAILURE_FILE]


def test_hostile_file_helper_breaks_what_it_says(images: Path) -> None:
    """The fixture's damaged files are what their names say (else the tests above would prove nothing)."""
    for kind in ("half a png", "png without its end"):
        with pytest.raises((OSError, SyntaxError)), Image.open(images / hostile_file(images, kind)) as image:
            image.verify()
    with Image.open(io.BytesIO((images / "img" / "0.png").read_bytes())) as image:
        image.verify()
    dataset_rows = base_rows()
    dataset_rows[1][0] = hostile_file(images, "half a jpeg")
    manifest = read_manifest(write(images, ["path", "label", "split"], dataset_rows, "jpeg.csv"), num_classes=3)
    with pytest.raises(ManifestError, match="row 3"):
        ManifestImageDataset(manifest, image_size=8, cache=True)
