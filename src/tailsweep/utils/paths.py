"""Where the configs and the project root are, found from the package itself (no sys.path tricks).

A template is used from its clone (``pip install -e .``): the configs live in ``<root>/configs``. Set
``TAILSWEEP_CONFIG_DIR`` / ``TAILSWEEP_ROOT`` to use another tree (e.g. a project built on this template).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def project_root() -> Path:
    """The directory holding ``configs/`` (``TAILSWEEP_ROOT`` overrides)."""
    if "TAILSWEEP_ROOT" in os.environ:
        return Path(os.environ["TAILSWEEP_ROOT"]).resolve()
    return Path(__file__).resolve().parents[3]


def config_dir() -> str:
    """Absolute path of the Hydra config directory (``TAILSWEEP_CONFIG_DIR`` overrides)."""
    path = Path(os.environ.get("TAILSWEEP_CONFIG_DIR", project_root() / "configs")).resolve()
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(
            f"tailsweep: no Hydra configs at {path} (train.yaml missing). Install the template from its clone "
            "(pip install -e .) or set TAILSWEEP_CONFIG_DIR to your configs directory."
        )
    return str(path)


def register_resolvers() -> None:
    """``${project_root:}``, ``${resume_run_dir:ckpt,runs,default}`` and ``${run_config_subdir:dir,mode,ckpt}``
    for configs; idempotent."""
    from tailsweep.utils.checkpointing import resume_run_dir
    from tailsweep.utils.resume import run_config_subdir

    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("resume_run_dir"):
        OmegaConf.register_new_resolver("resume_run_dir", resume_run_dir)
    if not OmegaConf.has_resolver("run_config_subdir"):
        OmegaConf.register_new_resolver("run_config_subdir", run_config_subdir)
