"""README "Your own data": its commands, run as a user types them, on small image trees drawn here.

The commands are read from the README itself (the lines starting ``tailsweep-train data=`` in that section), so
the walk-through cannot drift from what is tested; the test only appends ``debug=fast_dev_run`` and an output
directory in ``tmp_path``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tailsweep.utils.paths import project_root
from tailsweep.utils.runtime import METRICS_FILE

SIDE = 28
PETS = ("cat", "dog", "fish", "owl", "rat")


def readme_commands() -> list[list[str]]:
    text = (project_root() / "README.md").read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line)[1:] for line in section.splitlines() if line.startswith("tailsweep-train data=")]


def draw(count: int, rng: np.random.Generator) -> Image.Image:
    """A 28x28 scan-like picture: ``count`` bright blobs on a dark, noisy background."""
    background = rng.integers(0, 60, size=(SIDE, SIDE, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    pen = ImageDraw.Draw(image)
    for _ in range(count):
        x, y = rng.integers(2, SIDE - 7, size=2)
        pen.ellipse([int(x), int(y), int(x) + 4, int(y) + 4], fill=(230, 220, 210))
    return image


def make_pets(root: Path) -> None:
    """``root/<pet>/<k>.png``: 5 unevenly sized classes."""
    rng = np.random.default_rng(0)
    for k, pet in enumerate(PETS):
        (root / pet).mkdir(parents=True)
        for i in range(24 if k == 0 else 10):
            draw(k + 1, rng).save(root / pet / f"{i:03d}.png")


def make_counts(root: Path) -> None:
    """``root/labels.csv`` + ``root/images/``: counts 0..9 with a long tail (no split column)."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    labels = np.minimum(rng.exponential(2.0, size=150).astype(int), 9)
    labels[:10] = np.arange(10)  # every count present
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for i, label in enumerate(labels.tolist()):
            draw(label, rng).save(root / "images" / f"{i}.png")
            writer.writerow([f"images/{i}.png", label])


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tailsweep.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_readme_shows_the_two_walk_throughs() -> None:
    assert readme_commands() == [["data=folder", "data.root=pets"],
                                 ["data=manifest", "data.manifest=counts/labels.csv", "loss=corn"]]


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c[0])
def test_readme_walk_through_trains_with_nothing_else(command: list[str], tmp_path: Path) -> None:
    make_pets(tmp_path / "pets")
    make_counts(tmp_path / "counts")
    result = run([*command, "debug=fast_dev_run", f"paths.log_dir={tmp_path / 'logs'}"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    (line,) = [line for line in output.splitlines() if "] - data: task" in line]
    if command[0] == "data=folder":
        expected = "task ordinal (from loss rps), 5 classes (cat, dog, fish, owl, rat), images 28x28 -> image_size 28"
    else:
        expected = "task ordinal (from loss corn), 10 classes (labels 0..9), images 28x28 -> image_size 28"
    assert expected in line
    assert not re.search(r"pin_memory.*(no accelerator|set as true)", output)  # the CPU warning is gone
    (run_dir,) = (tmp_path / "logs" / "debug" / "runs").iterdir()
    metrics = json.loads((run_dir / METRICS_FILE).read_text())["metrics"]
    assert {"test/ev_mae", "test/rps", "test/loss"} <= set(metrics)
