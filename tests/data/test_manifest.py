"""Manifest reading per format and task, and validation: every bad input is named with its file, row and value."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tailsweep.data.datasets import ManifestImageDataset, load_image
from tailsweep.data.manifest import ManifestError, read_image_folder, read_manifest

SPLIT = ["train", "train", "train", "train", "val", "val", "test", "test"]


@pytest.fixture
def counting_copy(counting_root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "counting"
    shutil.copytree(counting_root, target)
    return target / "manifest.csv"


def _rewrite(manifest: Path, line: int, column: str, value: str) -> None:
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    manifest.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ counting manifest
def test_reads_all_rows(counting_copy: Path) -> None:
    manifest = read_manifest(counting_copy, task="ordinal", num_classes=30)
    assert len(manifest) == 320
    assert set(manifest.splits) == {"train", "val", "test"}
    assert manifest.targets.dtype == torch.long and int(manifest.targets.max()) < 30
    assert manifest.group_ids.unique().numel() == 40


def test_missing_file_names_file_and_row(counting_copy: Path) -> None:
    (counting_copy.parent / "images" / "000004.png").unlink()
    with pytest.raises(ManifestError, match=r"row 6: image file .*000004\.png does not exist"):
        read_manifest(counting_copy, num_classes=30)


def test_label_out_of_range_names_row_and_range(counting_copy: Path) -> None:
    _rewrite(counting_copy, 3, "label", "30")
    with pytest.raises(ManifestError, match=r"row 3: label must lie in 0\.\.29 .*got 30"):
        read_manifest(counting_copy, num_classes=30)


def test_label_that_is_not_a_number(counting_copy: Path) -> None:
    _rewrite(counting_copy, 4, "label", "five")
    with pytest.raises(ManifestError, match=r"row 4: label must be an integer class index, got 'five'"):
        read_manifest(counting_copy, num_classes=30)


def test_unknown_split_and_missing_column(counting_copy: Path) -> None:
    _rewrite(counting_copy, 2, "split", "holdout")
    with pytest.raises(ManifestError, match=r"row 2: split must be one of .*got 'holdout'"):
        read_manifest(counting_copy, num_classes=30)
    with pytest.raises(ManifestError, match=r"missing column 'labels'"):
        read_manifest(counting_copy, num_classes=30, label_column="labels")


def test_group_straddling_splits_is_refused(counting_copy: Path) -> None:
    _rewrite(counting_copy, 2, "split", "test" if "train" in counting_copy.read_text().splitlines()[1] else "train")
    with pytest.raises(ManifestError, match=r"group 0 .*straddles splits .*rows \[2, 3"):
        read_manifest(counting_copy, num_classes=30)


def test_corrupt_image_names_file_and_row(counting_copy: Path) -> None:
    manifest = read_manifest(counting_copy, num_classes=30)
    Path(manifest.paths[2]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = ManifestImageDataset(manifest, image_size=24)
    with pytest.raises(ManifestError, match=r"row 4: image file .* cannot be decoded"):
        dataset[2]
    with pytest.raises(ManifestError, match=r"row 4: image file .* cannot be decoded"):
        ManifestImageDataset(manifest, image_size=24, cache=True)  # caching decodes at setup, before training
    with pytest.raises(ManifestError, match="does not exist"):
        load_image(str(counting_copy.parent / "nope.png"))


# ------------------------------------------------------------------------------------------ per task
def test_class_names_as_labels(write_manifest) -> None:
    rows = [(f"img/{k}.png", ["cat", "dog", "fox"][k % 3], SPLIT[k]) for k in range(8)]
    manifest = read_manifest(write_manifest(("path", "label", "split"), rows), class_names=["cat", "dog", "fox"])
    assert manifest.targets.tolist() == [k % 3 for k in range(8)] and manifest.num_classes == 3
    rows[5] = ("img/5.png", "owl", "val")
    with pytest.raises(ManifestError, match=r"row 7: label must be a known label name .*got 'owl'"):
        read_manifest(write_manifest(("path", "label", "split"), rows), class_names=["cat", "dog", "fox"])


def test_class_names_file_and_num_classes_mismatch(write_manifest, tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("low\nmid\nhigh\n")
    path = write_manifest(("path", "label"), [(f"img/{k}.png", k % 3) for k in range(12)])
    assert read_manifest(path, task="ordinal", class_names="classes.txt").class_names == ("low", "mid", "high")
    with pytest.raises(ManifestError, match=r"data.num_classes=4 but the manifest defines 3"):
        read_manifest(path, task="ordinal", class_names="classes.txt", num_classes=4)
    inferred = read_manifest(path)  # data.num_classes=auto: the largest label + 1
    assert inferred.num_classes == 3 and inferred.class_names is None
    with pytest.raises(ManifestError, match=r"class names file .*nope\.txt does not exist"):
        read_manifest(path, class_names="nope.txt")
    with pytest.raises(ManifestError, match=r"duplicates \['a'\]"):
        read_manifest(path, class_names=["a", "b", "a"])


def test_soft_block_with_glob(write_manifest) -> None:
    rows = [(f"img/{k}.png", 0.5, 0.25, 0.25, SPLIT[k]) for k in range(8)]
    rows[1] = ("img/1.png", 0.0, 1.0, 0.0, "train")
    path = write_manifest(("path", "p_a", "p_b", "p_c", "split"), rows)
    manifest = read_manifest(path, task="soft", label_columns="p_*")
    assert manifest.targets.dtype == torch.float32 and manifest.targets.shape == (8, 3)
    assert manifest.class_names == ("p_a", "p_b", "p_c")
    torch.testing.assert_close(manifest.targets.sum(1), torch.ones(8))


@pytest.mark.parametrize(
    ("row", "message"),
    [(("img/3.png", 0.5, 0.25, 0.2, "train"), r"row 5: soft targets \(p_a..p_c\) must sum to 1 .*got 0.95"),
     (("img/3.png", 1.2, -0.2, 0.0, "train"), r"row 5: p_a must be a probability in \[0, 1\], got '1.2'"),
     (("img/3.png", "", 0.5, 0.5, "train"), r"row 5: p_a must be a probability .*got ''"),
     (("img/3.png", "half", 0.5, 0.5, "train"), r"row 5: p_a must be a probability .*got 'half'")],
)
def test_bad_soft_rows(write_manifest, row: tuple, message: str) -> None:
    rows = [(f"img/{k}.png", 0.5, 0.25, 0.25, SPLIT[k]) for k in range(8)]
    rows[3] = row
    with pytest.raises(ManifestError, match=message):
        read_manifest(write_manifest(("path", "p_a", "p_b", "p_c", "split"), rows), task="soft",
                      label_columns=["p_a", "p_b", "p_c"])


def test_soft_needs_label_columns(write_manifest) -> None:
    with pytest.raises(ManifestError, match=r"soft targets need data\.reader\.label_columns"):
        read_manifest(write_manifest(("path", "label"), [("img/0.png", 1)]), task="soft")


def test_multihot_block_with_unknowns(write_manifest) -> None:
    rows = [(f"img/{k}.png", *cells, SPLIT[k]) for k, cells in
            enumerate([(1, 0, 0), (0, 0, 0), (1, -1, 1), ("", 0, 1), (0, 1, 0), (0, 0, 0), (1, 1, 0), (0, 0, 1)])]
    manifest = read_manifest(write_manifest(("path", "a", "b", "c", "split"), rows), task="multilabel",
                             label_columns=["a", "b", "c"])
    assert manifest.targets.dtype == torch.int8
    assert manifest.targets[2].tolist() == [1, -1, 1] and manifest.targets[3].tolist() == [-1, 0, 1]
    rows[4] = ("img/4.png", 2, 0, 0, "val")
    with pytest.raises(ManifestError, match=r"row 6: a must be 1 \(positive\), 0 \(negative\), .*got '2'"):
        read_manifest(write_manifest(("path", "a", "b", "c", "split"), rows), task="multilabel",
                      label_columns=["a", "b", "c"])


def test_label_name_lists(write_manifest) -> None:
    cells = ["collar|sleeve", "", "?collar", "sleeve | zip", "zip", "", "collar", "sleeve|?zip"]
    path = write_manifest(("path", "labels", "split"), [(f"img/{k}.png", c, SPLIT[k]) for k, c in enumerate(cells)])
    manifest = read_manifest(path, task="multilabel", label_column="labels", class_names=["collar", "sleeve", "zip"])
    assert manifest.targets.tolist() == [[1, 1, 0], [0, 0, 0], [-1, 0, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0],
                                         [1, 0, 0], [0, 1, -1]]
    with pytest.raises(ManifestError, match=r"row 3: labels holds unknown label name 'hood'"):
        read_manifest(write_manifest(("path", "labels"), [("img/0.png", "zip"), ("img/1.png", "zip|hood")]),
                      task="multilabel", label_column="labels", class_names=["collar", "sleeve", "zip"])
    with pytest.raises(ManifestError, match=r"needs data\.class_names"):
        read_manifest(path, task="multilabel", label_column="labels")


def test_parquet_matches_csv(write_manifest, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rows = [(f"img/{k}.png", k % 3, 0.5, 0.5, 1 if k % 2 else 0, k // 2 if k < 6 else None, SPLIT[k])
            for k in range(8)]
    header = ("path", "label", "p_a", "p_b", "tag", "group_id", "split")
    csv_path = write_manifest(header, rows)
    pd.DataFrame(rows, columns=header).to_parquet(tmp_path / "manifest.parquet")
    for kwargs in ({"num_classes": 3}, {"task": "soft", "label_columns": ["p_a", "p_b"]},
                   {"task": "multilabel", "label_columns": ["tag"]}):
        from_csv, from_parquet = (read_manifest(p, **kwargs) for p in (csv_path, tmp_path / "manifest.parquet"))
        torch.testing.assert_close(from_csv.targets, from_parquet.targets)
        assert from_csv.group_ids.tolist() == from_parquet.group_ids.tolist()
        assert from_csv.paths == from_parquet.paths
        assert from_csv.splits.tolist() == from_parquet.splits.tolist()


# ------------------------------------------------------------------------------------------ groups, splits, weights
def test_groups_missing_and_named(write_manifest) -> None:
    groups = ["7", "7", "", "3", "", "3", "7", ""]
    rows = [(f"img/{k}.png", k % 2, g, "train") for k, g in enumerate(groups)]
    ids = read_manifest(write_manifest(("path", "label", "group_id", "split"), rows), num_classes=2).group_ids
    assert ids[0] == ids[1] == ids[6] and ids[3] == ids[5]
    lone = ids[[2, 4, 7]].tolist()
    assert len(set(lone)) == 3 and not set(lone) & {7, 3}  # fresh ids, above the given ones
    named = [(f"img/{k}.png", 0, f"box{k // 3}", "train") for k in range(6)]
    ids = read_manifest(write_manifest(("path", "label", "group_id", "split"), named), num_classes=2).group_ids
    assert ids.tolist() == [0, 0, 0, 1, 1, 1]


def test_without_split_column_groups_stay_together(write_manifest) -> None:
    rows = [(f"img/{k}.png", k % 4, k // 4) for k in range(400)]  # each image once: files are not read here
    manifest = read_manifest(write_manifest(("path", "label", "group_id"), rows), num_classes=4, split_seed=3,
                             check_files=False)
    for group in range(100):
        assert len(set(manifest.splits[manifest.group_ids.numpy() == group])) == 1
    share = {s: float((manifest.splits == s).mean()) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.05 and abs(share["val"] - 0.1) < 0.04
    again = read_manifest(write_manifest(("path", "label", "group_id"), rows), num_classes=4, split_seed=3,
                          check_files=False)
    assert again.splits.tolist() == manifest.splits.tolist()


def test_weight_column(write_manifest) -> None:
    rows = [(f"img/{k}.png", 0, k * 0.5, "train") for k in range(4)]
    path = write_manifest(("path", "label", "w", "split"), rows)
    assert read_manifest(path, num_classes=2, weight_column="w").weights.tolist() == [0.0, 0.5, 1.0, 1.5]
    rows[2] = ("img/2.png", 0, -1, "train")
    with pytest.raises(ManifestError, match=r"row 4: w must be a finite weight >= 0, got '-1'"):
        read_manifest(write_manifest(("path", "label", "w", "split"), rows), num_classes=2, weight_column="w")
    with pytest.raises(ManifestError, match="missing column 'weight'"):
        read_manifest(path, num_classes=2, weight_column="weight")


def test_ragged_and_empty_manifests(write_manifest) -> None:
    with pytest.raises(ManifestError, match="row 3: expected 3 cells"):
        read_manifest(write_manifest(("path", "label", "split"), [("img/0.png", 0, "train"), ("img/1.png", 1)]),
                      num_classes=2)
    with pytest.raises(ManifestError, match="has a header but no rows"):
        read_manifest(write_manifest(("path", "label"), []), num_classes=2)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest("/nonexistent/manifest.csv", num_classes=2)


# ------------------------------------------------------------------------------------------ image folders
def _folder(root: Path, layout: dict[str, int]) -> None:
    for relative, count in layout.items():
        (root / relative).mkdir(parents=True)
        for k in range(count):
            Image.fromarray(np.full((6, 6, 3), k, np.uint8)).save(root / relative / f"{k}.png")


def test_folder_classes_sort_numerically(tmp_path: Path) -> None:
    _folder(tmp_path, {"2": 6, "10": 6, "0": 8})
    manifest = read_image_folder(tmp_path, task="ordinal")
    assert manifest.class_names == ("0", "2", "10") and manifest.num_classes == 3
    assert np.bincount(manifest.targets.numpy()).tolist() == [8, 6, 6]
    assert set(manifest.splits) <= {"train", "val", "test"}
    assert read_manifest(tmp_path, task="ordinal").paths == manifest.paths  # format auto: a directory


def test_folder_with_split_folders_and_errors(tmp_path: Path) -> None:
    _folder(tmp_path / "a", {"train/cat": 3, "train/dog": 2, "val/cat": 1, "test/dog": 2})
    manifest = read_image_folder(tmp_path / "a")
    assert manifest.splits.tolist() == ["test", "test", "train", "train", "train", "train", "train", "val"]
    with pytest.raises(ManifestError, match=r"folder\(s\) \['dog'\] are not among data.class_names"):
        read_image_folder(tmp_path / "a", class_names=["cat", "cow"])
    with pytest.raises(ManifestError, match="num_classes=3 but the manifest defines 2"):
        read_image_folder(tmp_path / "a", num_classes=3)
    with pytest.raises(ManifestError, match="task must be multiclass or ordinal"):
        read_image_folder(tmp_path / "a", task="soft")
    _folder(tmp_path / "b", {"train/cat": 1, "dog": 1})
    with pytest.raises(ManifestError, match="mixes split folders"):
        read_image_folder(tmp_path / "b")


# ------------------------------------------------------------------------------------------ inferred (auto)
ORDINAL_ONLY, HARD, MULTILABEL_ONLY = {"ordinal"}, {"multiclass", "ordinal"}, {"multilabel"}


@pytest.mark.parametrize(("loss_tasks", "task"), [(None, "multiclass"), (HARD, "multiclass"),
                                                  (ORDINAL_ONLY, "ordinal")])
def test_auto_task_of_a_label_column_follows_the_loss(write_manifest, loss_tasks, task: str) -> None:
    path = write_manifest(("path", "label"), [(f"img/{k}.png", k % 4) for k in range(12)])
    manifest = read_manifest(path, task="auto", num_classes="auto", loss_tasks=loss_tasks)
    assert manifest.task == task and manifest.num_classes == 4


def test_auto_task_of_columns_and_label_lists(write_manifest) -> None:
    soft = write_manifest(("path", "p_a", "p_b"), [(f"img/{k}.png", 0.25, 0.75) for k in range(12)], "soft.csv")
    assert read_manifest(soft, label_columns="p_*").task == "soft"  # fractions: probabilities
    hot = write_manifest(("path", "a", "b"), [(f"img/{k}.png", k % 2, "") for k in range(12)], "hot.csv")
    assert read_manifest(hot, label_columns=["a", "b"]).task == "multilabel"  # 1/0/empty: multi-hot
    lists = write_manifest(("path", "label"), [(f"img/{k}.png", "x|y" if k % 2 else "y") for k in range(12)],
                           "lists.csv")
    manifest = read_manifest(lists, class_names=["x", "y"], loss_tasks=MULTILABEL_ONLY)
    assert manifest.task == "multilabel" and manifest.targets[1].tolist() == [1, 1]
    with pytest.raises(ManifestError, match=r"row 3: label must be a known label name .*got 'x\|y'"):
        read_manifest(lists, class_names=["x", "y"])  # a class column (no multi-label loss): lists are errors
    single = write_manifest(("path", "label"), [(f"img/{k}.png", "y") for k in range(12)], "single.csv")
    assert read_manifest(single, class_names=["x", "y"], loss_tasks=MULTILABEL_ONLY).task == "multilabel"


def test_auto_num_classes_from_names_and_labels(write_manifest) -> None:
    named = write_manifest(("path", "label"), [(f"img/{k}.png", ("dog", "cat", "owl")[k % 3]) for k in range(12)])
    manifest = read_manifest(named)
    assert manifest.class_names == ("cat", "dog", "owl") and manifest.targets[:3].tolist() == [1, 0, 2]
    with pytest.raises(ManifestError, match=r"ordinal labels given as names .* need data\.class_names"):
        read_manifest(named, task="ordinal")
    huge = write_manifest(("path", "label"), [("img/0.png", 1), ("img/1.png", 10**12)], "huge.csv")
    with pytest.raises(ManifestError, match=r"row 3: label must be a class index in 0\.\.99999 .*got 1000000000000"):
        read_manifest(huge)
    negative = write_manifest(("path", "label"), [("img/0.png", 1), ("img/1.png", -1)], "negative.csv")
    with pytest.raises(ManifestError, match=r"row 3: label must be a class index"):
        read_manifest(negative)
    with pytest.raises(ManifestError, match=r"data\.reader has unknown option\(s\) \['label_colum'\]"):
        read_manifest(named, label_colum="label")
