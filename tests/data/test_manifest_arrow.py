"""The Arrow manifest reader gives what the csv-module reader gives: the same rows and line numbers (empty lines,
CRLF, lone CR, quoted line breaks, block edges), the same normalised paths for every spelling, the same values from
typed Parquet columns, and the same errors; the shared parse under DDP; ``ImagePaths``."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tailsweep.data import manifest as manifest_module
from tailsweep.data import manifest_share
from tailsweep.data.image_paths import ImagePaths
from tailsweep.data.manifest import ManifestError, _Table, read_manifest


def _csv_module_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, records and first-line numbers as the csv module reads them (the reference)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        records, lines, start = [], [], reader.line_num + 1
        for record in reader:
            if record:
                records.append(record)
                lines.append(start)
            start = reader.line_num + 1
    return [h.strip() for h in header], records, lines


LAYOUTS = {
    "lf": "path,label\na.png,0\nb.png,1\nc.png,0\n",
    "crlf": "path,label\r\na.png,0\r\nb.png,1\r\nc.png,0\r\n",
    "lone cr": "path,label\ra.png,0\rb.png,1\rc.png,0",
    "no final newline": "path,label\na.png,0\nb.png,1\nc.png,0",
    "trailing empty lines": "path,label\na.png,0\nb.png,1\nc.png,0\n\n\r\n\n",
    "empty lines between": "path,label\na.png,0\n\nb.png,1\n\n\nc.png,0\n",
    "quoted line break": 'path,label\na.png,0\n"b\nx.png",1\nc.png,0\n',
    "quoted comma and quote": 'path,label\n"a,1.png",0\n"b""q"".png",1\nc.png,0\n',
    "bom": "\ufeffpath,label\na.png,0\nb.png,1\nc.png,0\n",
    "spaced header": " path , label \na.png,0\nb.png,1\nc.png,0\n",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("block", [7, 1 << 24])
def test_rows_and_line_numbers_match_the_csv_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str,
                                                    block: int) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(LAYOUTS[layout].encode())
    monkeypatch.setattr(manifest_module, "_BLOCK_BYTES", block)  # 7: line ends straddle the counting blocks
    header, records, lines = _csv_module_rows(path)
    table = _Table.read(path, "csv")
    assert table.header == header
    assert table.rows.tolist() == lines
    for at, name in enumerate(header):
        assert table.column(name, "a column").to_pylist() == [record[at] for record in records]


def test_an_error_after_empty_lines_names_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("path,label\nimg/0.png,0\n\n\nimg/1.png,7\n")
    with pytest.raises(ManifestError, match=r"row 5: label must lie in 0\.\.2 .*got 7"):
        read_manifest(path, num_classes=3, check_files=False)


SPELLINGS = ["img/a.png", "./img/a.png", "img//a.png", "img/./a.png", "img/../img/a.png", " img/a.png ",
             "\u3000img/a.png", "img/a.png\u00a0", "/abs/a.png", "//host/a.png", "img/a.png/", ".hidden/a.png",
             "img/.a.png", "img\\a.png", "\u00e9t\u00e9/a.png", "\u30a2/a.png", "a", "..x/a.png", "img/a b.png"]


@pytest.mark.parametrize("base", ["data", "data/sub/..", "/"])
def test_paths_are_normpath_of_join_for_every_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       base: str) -> None:
    folder = tmp_path / base if base != "/" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.csv"
    rows = [f"{spelling.replace('a.png', f'{k}.png')}" for k, spelling in enumerate(SPELLINGS)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([cell, k % 2] for k, cell in enumerate(rows))
    monkeypatch.chdir(tmp_path)
    relative = Path(os.path.relpath(path, tmp_path))  # a relative manifest path: its folder may be "."
    for given in (path, relative):
        manifest = read_manifest(given, num_classes=2, check_files=False)
        expected = [os.path.normpath(os.path.join(str(given.parent), cell.strip())) for cell in rows]
        assert list(manifest.paths) == expected


def test_duplicates_are_found_sorted_or_not(tmp_path: Path) -> None:
    order = np.random.default_rng(0).permutation(3000)
    cells = [f"img/{k}.png" for k in order]
    cells[2500] = "./" + cells[10]  # the same image, spelled differently, late in an unsorted manifest
    path = tmp_path / "m.csv"
    path.write_text("path,label\n" + "".join(f"{c},0\n" for c in cells))
    with pytest.raises(ManifestError, match=r"twice, rows 12 and 2502"):
        read_manifest(path, num_classes=2, check_files=False)


def test_integer_looking_cells_python_does_not_read_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("path,label\nimg/0.png,0\nimg/1.png,0x1\n")  # Arrow's integer cast reads 0x1; int() does not
    with pytest.raises(ManifestError, match=r"row 3: label must be an integer class index, got '0x1'"):
        read_manifest(path, num_classes=3, check_files=False)
    path.write_text("path,label,group_id\nimg/0.png,0,0x1\nimg/1.png,1,1\n")  # a group name, not the id 1
    groups = read_manifest(path, num_classes=3, check_files=False).group_ids.tolist()
    assert groups[0] != groups[1]


def test_plain_decimals_parse_to_pythons_floats(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    numbers = [f"{x:.17g}" for x in rng.random(300) * 10.0 ** rng.integers(-300, 300, 300)]
    numbers += ["1.", ".5", "1e-3", "+0.25", "1_0", " 0.5", "\u0661", "1E5", "-0"]  # the last four: Python's own
    path = tmp_path / "m.csv"
    path.write_text("path,label,w\n" + "".join(f"img/{k}.png,0,{n}\n" for k, n in enumerate(numbers)))
    weights = read_manifest(path, num_classes=2, weight_column="w", check_files=False).weights
    assert weights is not None and weights.tolist() == [float(n) for n in numbers]


def test_typed_parquet_columns_read_as_their_text(tmp_path: Path) -> None:
    """Integers with nulls (floats in pandas: "3.0"), float group ids (names), booleans, NaN (empty): what the
    pandas-based reader made of them."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "path": [f"img/{k}.png" for k in range(6)],
        "label": pa.array([0, 1, 2, 1, None, 0], type=pa.int64()),
        "group_id": pa.array([0.5, 0.5, 1.0, float("nan"), 2.0, 2.0]),
        "tag": pa.array([True, False, True, None, False, True]),
        "split": ["train"] * 6,
    })
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"row 5: label must be an integer class index, got ''"):
        read_manifest(tmp_path / "m.parquet", num_classes=3, check_files=False)
    pq.write_table(table.set_column(1, "label", pa.array([0, 1, 2, 1, 1, 0])), tmp_path / "m.parquet")
    manifest = read_manifest(tmp_path / "m.parquet", num_classes=3, check_files=False)
    ids = manifest.group_ids.tolist()
    assert ids[0] == ids[1] and ids[4] == ids[5] and len({ids[0], ids[2], ids[3], ids[4]}) == 4
    hot = read_manifest(tmp_path / "m.parquet", task="multilabel", label_columns=["tag"], check_files=False)
    assert hot.targets[:, 0].tolist() == [1, 0, 1, -1, 0, 1]


def test_image_paths_sequence_behaviour() -> None:
    paths = ImagePaths.from_strings(["a.png", "b/\udcff.png", "c.png"], prefix="/d/")  # a non-UTF-8 file name
    assert len(paths) == 3 and paths[0] == "/d/a.png" and paths[-1] == "/d/c.png"
    assert list(paths) == ["/d/a.png", "/d/b/\udcff.png", "/d/c.png"]
    assert paths[1:] == ("/d/b/\udcff.png", "/d/c.png") and paths.take(np.array([2, 0])) == ["/d/c.png", "/d/a.png"]
    assert pickle.loads(pickle.dumps(paths)) == paths
    assert paths != ImagePaths.from_strings(["/d/a.png"]) and paths == ImagePaths.from_strings(list(paths))
    with pytest.raises(IndexError, match="out of range"):
        paths[3]


def test_all_distinct_is_exact_on_a_hash_collision(monkeypatch: pytest.MonkeyPatch) -> None:
    unsorted = ImagePaths.from_strings([f"{k}.png" for k in (5, 3, 9, 1)])
    assert unsorted.all_distinct()
    monkeypatch.setattr(ImagePaths, "_hashes", lambda self: np.zeros(len(self), dtype=np.uint64))
    assert unsorted.all_distinct()  # every hash collides: the exact count decides
    assert not ImagePaths.from_strings(["b", "a", "b"]).all_distinct()


def test_hashes_of_equal_paths_are_equal_anywhere_in_the_buffer() -> None:
    rng = np.random.default_rng(2)
    names = [f"{'x' * int(rng.integers(0, 30))}{k % 500}" for k in range(70_000)]  # > 64 KiB: the unpadded view
    names += names[:3]  # the same names again at the very end of the buffer
    paths = ImagePaths.from_strings(names)
    hashes = paths._hashes()
    seen: dict[str, int] = {}
    for name, value in zip(names, hashes.tolist(), strict=True):
        assert seen.setdefault(name, value) == value
    assert len(set(hashes.tolist())) == len(set(names))


# ------------------------------------------------------------------------------------------ shared parse (DDP)
@pytest.fixture
def share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TAILSWEEP_MANIFEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(manifest_share, "SHARE_MIN_ROWS", 1)
    path = tmp_path / "m.csv"
    path.write_text("path,label,split\n" + "".join(f"img/{k}.png,{k % 3},train\n" for k in range(30)))
    return path


def test_other_local_ranks_load_rank_zeros_parse(share: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    first = manifest_share.read_manifest_shared(share, num_classes=3, check_files=False)
    assert len(list((share.parent / "cache").glob("*.pkl"))) == 1

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("rank 1 parsed the manifest again")

    monkeypatch.setattr(manifest_share, "read_manifest", no_parse)
    monkeypatch.setenv("LOCAL_RANK", "1")
    loaded = manifest_share.read_manifest_shared(share, num_classes=3, check_files=False)
    assert loaded.paths == first.paths and torch.equal(loaded.targets, first.targets)
    assert loaded.splits.tolist() == first.splits.tolist() and loaded.rows.tolist() == first.rows.tolist()
    with pytest.raises(AssertionError, match="parsed the manifest again"):  # another option: another file
        manifest_share.read_manifest_shared(share, num_classes=4, check_files=False)


def test_a_changed_manifest_is_parsed_again(share: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    manifest_share.read_manifest_shared(share, num_classes=3, check_files=False)
    share.write_text(share.read_text().replace("img/4.png,1", "img/4.png,2"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert manifest_share.read_manifest_shared(share, num_classes=3, check_files=False).targets[4] == 2


def test_small_manifests_leave_no_file(share: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(manifest_share, "SHARE_MIN_ROWS", 1000)
    manifest_share.read_manifest_shared(share, num_classes=3, check_files=False)
    assert not (share.parent / "cache").exists()
