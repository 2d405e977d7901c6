"""``import tailsweep.train`` (every run, sweep job and DDP rank pays it) leaves out the libraries only some runs
use: timm (a timm backbone or transform; it also imports W&B), W&B (the wandb logger), pandas, and torchvision's
transforms (``build_transform``). See ``benchmarks/startup.py`` for what each costs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: imported on first use only (matplotlib, scipy and torchvision itself come with Lightning and torchmetrics)
LAZY = ("timm", "wandb", "pandas", "torchvision.transforms.v2")


def test_the_training_entry_point_imports_no_rarely_used_library() -> None:
    code = f"import sys, tailsweep.train; print(sorted(m for m in {LAZY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_a_timm_backbone_still_builds_and_states_its_input_size() -> None:
    from tailsweep.models.backbones import build_backbone, default_input_size

    assert default_input_size("resnet18") == 224 and default_input_size("tiny_cnn") is None
    assert build_backbone("resnet18").num_features == 512
