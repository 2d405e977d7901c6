"""Resuming is continuing the same run: its own overrides, the new ones on top, any other change refused.

``tailsweep-train ckpt_path=last|<path>`` used to compose the *default* config plus whatever the resume command
repeated, so a run trained with ``seed=5 data.image_size=24`` silently resumed with seed 42 and 48-pixel images.
Now the run's own overrides (those of its latest attempt, ``.hydra[/attempt-N]/overrides.yaml``) are read first and
the resume command's overrides are applied on top (``resume_argv``, before Hydra composes). Overrides that keep
the run the same experiment (``resume.same_experiment`` in ``train.yaml``: epochs, limits, devices, loggers,
callbacks, paths) may change; any other difference stops the resume with the list of keys, the run's value and the
new one, unless ``resume.allow_changes=true``.

Every attempt keeps its own config: the first in ``.hydra/``, the n-th resume in ``.hydra/attempt-n/`` (the
``hydra.output_subdir`` resolver ``run_config_subdir``), so nothing the run wrote before is overwritten.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

RUN_CONFIG_DIR = ".hydra"
ATTEMPT_PREFIX = "attempt-"
#: overrides of the run that describe where it ran, not what it is: the resume sets them anew
_NOT_CARRIED = ("ckpt_path", "hydra.run.dir", "hydra.output_subdir", "hydra.job.name")
#: flags of Hydra's command line that take the next argument as their value
_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                     "--package", "-p", "--experimental-rerun", "--shell-completion", "-sc"}


@dataclass(frozen=True)
class Drift:
    """A setting the resume command changes: the key, the run's value and the new one."""

    key: str
    run_value: str
    new_value: str

    def __str__(self) -> str:
        return f"{self.key}: run has {self.run_value}, resume asks for {self.new_value}"


class ResumeDriftError(ValueError):
    """The resume command changes what the run is (loss, data, model, optimizer, seed, ...)."""


# ------------------------------------------------------------------------------------------- attempts of a run
def attempt_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """``<run>/.hydra/attempt-N`` directories, by N."""
    root = Path(run_dir) / RUN_CONFIG_DIR
    found = [p for p in root.glob(f"{ATTEMPT_PREFIX}*") if p.name[len(ATTEMPT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(ATTEMPT_PREFIX):]))


def latest_config_dir(run_dir: str | os.PathLike) -> Path:
    """The config directory of the run's latest attempt (``.hydra`` or its newest ``attempt-N``)."""
    for directory in reversed(attempt_dirs(run_dir)):
        if (directory / "overrides.yaml").is_file():
            return directory
    return Path(run_dir) / RUN_CONFIG_DIR


def attempt_number(run_dir: str | os.PathLike) -> int:
    """0 for a run's first attempt, N for the one whose config is in ``.hydra/attempt-N``."""
    dirs = attempt_dirs(run_dir)
    return int(dirs[-1].name[len(ATTEMPT_PREFIX):]) if dirs else 0


_SUBDIRS: dict[str, str | None] = {}


def run_config_subdir(output_dir: str, mode: object = None, ckpt_path: object = None) -> str | None:
    """Hydra resolver for ``hydra.output_subdir``: where this attempt's config goes.

    ``.hydra`` for a new run directory; ``.hydra/attempt-N`` (the next free N) when the directory already holds a
    run's config; ``None`` (Hydra then writes nothing) for a completed job of a re-run sweep, which is skipped
    and whose files must stay as they are. Memoised per directory: Hydra reads the value more than once.
    """
    key = str(Path(output_dir).resolve())
    if key not in _SUBDIRS:
        root = Path(key) / RUN_CONFIG_DIR
        if not (root / "config.yaml").is_file():
            _SUBDIRS[key] = RUN_CONFIG_DIR
        elif str(mode).endswith("MULTIRUN") and ckpt_path in (None, "", "None", "null") and job_completed(key):
            _SUBDIRS[key] = None
        else:
            _SUBDIRS[key] = f"{RUN_CONFIG_DIR}/{ATTEMPT_PREFIX}{attempt_number(key) + 1}"
    return _SUBDIRS[key]


def job_completed(run_dir: str | os.PathLike) -> bool:
    """The run directory's ``metrics.json`` says the run completed."""
    from tailsweep.utils.runtime import read_status

    return read_status(Path(run_dir)) == "completed"


# --------------------------------------------------------------------------------- overrides: merge and drift
def _parse(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def _key(override) -> str:
    return override.key_or_group + (f"@{override.package}" if override.package else "")


def _value(override) -> str:
    return "(deleted)" if override.is_delete() else override.get_value_element_as_str()


def merge_overrides(run: Sequence[str], new: Sequence[str]) -> list[str]:
    """The run's overrides with ``new`` applied on top: a key set anew replaces the run's, ``~key`` removes it.

    ``~callbacks.kill`` also removes ``+callbacks.kill.step=...``: a node the run added is dropped with its keys.
    A key the run added (``+key=v``) and the resume sets again (``key=w``) stays an addition (``++key=w``).
    """
    merged: dict[str, tuple[object, str]] = {}
    for override in _parse(run):
        if _key(override) not in _NOT_CARRIED:
            merged[_key(override)] = (override, override.input_line)
    for override in _parse(new):
        key = _key(override)
        if override.is_delete():
            inside = [k for k in merged if k == key or k.startswith(key + ".")]
            added_by_run = bool(inside) and all(merged[k][0].is_add() or merged[k][0].is_force_add() for k in inside)
            for k in inside:
                del merged[k]
            if not added_by_run:
                merged[key] = (override, override.input_line)
            continue
        line = override.input_line
        previous = merged.pop(key, None)
        if previous is not None and (previous[0].is_add() or previous[0].is_force_add()) and not (
                override.is_add() or override.is_force_add()):
            line = "++" + line
        merged[key] = (override, line)
    return [line for _, line in merged.values()]


def _run_value(key: str, config_dir: Path) -> str:
    """The run's value of ``key``: its config-group choice (``hydra.yaml``) or its config value."""
    hydra_file, config_file = config_dir / "hydra.yaml", config_dir / "config.yaml"
    if ("/" in key or "@" in key or "." not in key) and hydra_file.is_file():
        choices = OmegaConf.load(hydra_file).hydra.runtime.choices
        group = key.split("@")[0]
        if group in choices:
            return str(choices[group])
    if config_file.is_file():
        value = OmegaConf.select(OmegaConf.load(config_file), key.split("@")[0].replace("/", "."),
                                 default="(not set)", throw_on_resolution_failure=False)
        if isinstance(value, DictConfig | list) or OmegaConf.is_config(value):
            return OmegaConf.to_yaml(value).strip().replace("\n", "; ") or "{}"
        return str(value)
    return "(unknown)"


def config_drift(run: Sequence[str], merged: Sequence[str], same_experiment: Sequence[str],
                 config_dir: str | os.PathLike) -> list[Drift]:
    """The keys whose value differs between the run's overrides and ``merged``, outside ``same_experiment``.

    ``same_experiment`` holds glob patterns (``trainer.limit_*``, ``callbacks.*``) of keys a resume may change.
    """
    before = {_key(o): o for o in _parse(run) if _key(o) not in _NOT_CARRIED}
    after = {_key(o): o for o in _parse(merged) if _key(o) not in _NOT_CARRIED}
    drift = []
    for key in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(key), after.get(key)
        old_value = _value(old) if old is not None else None
        new_value = _value(new) if new is not None else None
        if old_value == new_value or any(fnmatch.fnmatchcase(key, pattern) for pattern in same_experiment):
            continue
        run_value = old_value if old_value is not None else _run_value(key, Path(config_dir))
        drift.append(Drift(key, run_value, new_value if new_value is not None else "(the default)"))
    return drift


# ------------------------------------------------------------------------------------ the resume command line
def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (with their values) and the overrides of a command line."""
    flags, overrides, expect_value = [], [], False
    for arg in argv:
        if expect_value:
            flags.append(arg)
            expect_value = False
        elif arg.startswith("-"):
            flags.append(arg)
            expect_value = arg in _FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return flags, overrides


def resume_command_line(argv: Sequence[str], config_dir: str, config_name: str) -> list[str]:
    """``resume_argv``, with a drift turned into an exit with the message (status 1), not a traceback."""
    try:
        return resume_argv(argv, config_dir, config_name)
    except ResumeDriftError as error:
        raise SystemExit(f"tailsweep: {error}") from None


def _compose(config_dir: str, config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="resume"):
        return compose(config_name, overrides=list(overrides))


def resume_argv(argv: Sequence[str], config_dir: str, config_name: str) -> list[str]:
    """``argv`` of a resume (``ckpt_path=...``) rewritten to the run's overrides plus the new ones on top.

    Unchanged for anything but a single run with ``ckpt_path`` (multiruns resume job by job, ranks >= 1 of a DDP
    run get the rank 0 command line). Raises ``ResumeDriftError`` listing the keys that would change the
    experiment (``resume.allow_changes=true`` lets them through, printing them).
    """
    from tailsweep.utils.checkpointing import resolve_checkpoint, run_dir_of_checkpoint

    program, args = list(argv[:1]), list(argv[1:])
    flags, overrides = _split_argv(args)
    if {"-m", "--multirun"} & set(flags) or os.environ.get("LOCAL_RANK", "0") != "0" or any(
            f in flags for f in ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")):
        return list(argv)
    ckpt = [o for o in _parse(overrides) if o.key_or_group == "ckpt_path" and not o.is_delete()]
    if not ckpt or ckpt[-1].get_value_element_as_str() in ("null", "None", ""):
        return list(argv)
    try:
        cli = _compose(config_dir, config_name, overrides)
    except Exception:  # e.g. ~callbacks.kill of a node only the run added: compose what places the run
        placing = [o.input_line for o in _parse(overrides) if not o.is_delete() and (
            "." not in o.key_or_group or o.key_or_group.startswith(("paths.", "task_name", "hydra.")))]
        cli = _compose(config_dir, config_name, placing)
    runs_dir = f"{cli.paths.log_dir}/{cli.task_name}/runs"
    try:
        checkpoint = resolve_checkpoint(ckpt[-1].get_value_element_as_str(), runs_dir)
    except (OSError, ValueError):
        return list(argv)  # the job reports the bad ckpt_path with its message (and failure.json)
    run_dir = run_dir_of_checkpoint(checkpoint) if checkpoint else None
    if run_dir is None or not (run_dir / RUN_CONFIG_DIR / "overrides.yaml").is_file():
        return list(argv)  # a checkpoint from elsewhere: nothing to re-compose, the command line is the config
    config = latest_config_dir(run_dir)
    run_overrides = [str(o) for o in OmegaConf.load(config / "overrides.yaml")]
    new = [o for o in overrides if not o.startswith("ckpt_path=")] + [f"ckpt_path={checkpoint}"]
    merged = merge_overrides(run_overrides, new)
    composed = _compose(config_dir, config_name, merged)
    resume = composed.get("resume") or {}
    drift = config_drift(run_overrides, merged, list(resume.get("same_experiment") or []), config)
    if drift:
        listing = "\n".join(f"  - {d}" for d in drift)
        if not resume.get("allow_changes", False):
            raise ResumeDriftError(
                f"ckpt_path={ckpt[-1].get_value_element_as_str()}: resuming run {run_dir} with settings that make "
                f"it another experiment:\n{listing}\nResume with the run's settings (drop these overrides), start a "
                "new run, or pass resume.allow_changes=true to continue with them anyway.")
        print(f"resume.allow_changes=true: resuming {run_dir} with changed settings:\n{listing}", file=sys.stderr)
    return [*program, *flags, *merged]


# ------------------------------------------------------------------------------------------ inside the job
def completed_job_metrics(cfg: DictConfig) -> dict[str, float] | None:
    """A re-run sweep's job that already completed: its saved metrics (the job is skipped); else None."""
    from tailsweep.utils.runtime import METRICS_FILE, is_multirun, output_dir

    if not is_multirun() or cfg.get("ckpt_path") not in (None, "") or not job_completed(output_dir()):
        return None
    import json

    saved = json.loads((output_dir() / METRICS_FILE).read_text())
    print(f"skipping completed job {output_dir()} (its {METRICS_FILE} says completed)", file=sys.stderr)
    return {k: float(v) for k, v in saved.get("metrics", {}).items()}


def job_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint this job starts from: ``ckpt_path`` resolved, or, when it is unset and the job's directory
    already holds a checkpoint (a re-run sweep's interrupted job, a requeued SLURM job), that checkpoint."""
    from tailsweep.utils.checkpointing import resolve_checkpoint, run_checkpoint
    from tailsweep.utils.runtime import output_dir

    explicit = resolve_checkpoint(cfg.get("ckpt_path"), f"{cfg.paths.log_dir}/{cfg.task_name}/runs")
    if explicit is not None:
        return explicit
    found, note = run_checkpoint(output_dir())
    if found is None:
        return None
    print(f"resuming {output_dir()} from {found}" + (f" ({note})" if note else ""), file=sys.stderr)
    return str(found)


def begin_attempt(run_dir: Path, checkpoint: str | None, loggers: Sequence[object] = ()) -> None:
    """Before a resumed attempt trains: nothing of the earlier attempts is lost or left looking current.

    Stale ``*.partial`` checkpoints are removed; the previous attempt's ``failure.json`` and ``metrics.json``
    become ``failure-attempt-K.json`` / ``metrics-attempt-K.json`` (K: the attempt that wrote them); CSV rows
    logged after the checkpoint's step move to ``csv/dropped-attempt-N.csv`` (the resumed attempt logs them anew).
    """
    from lightning.pytorch.utilities import rank_zero_only

    from tailsweep.utils.checkpointing import CHECKPOINT_DIR, remove_partial_checkpoints
    from tailsweep.utils.runtime import FAILURE_FILE, METRICS_FILE

    if checkpoint is None or rank_zero_only.rank != 0:
        return
    for stale in remove_partial_checkpoints(run_dir / CHECKPOINT_DIR):
        print(f"removed {stale} (left by a kill during a save)", file=sys.stderr)
    previous = max(attempt_number(run_dir) - 1, 0)
    for name in (FAILURE_FILE, METRICS_FILE):
        path = run_dir / name
        if path.is_file():
            aside = path.with_name(f"{path.stem}-attempt-{previous}{path.suffix}")
            while aside.exists():
                previous += 1
                aside = path.with_name(f"{path.stem}-attempt-{previous}{path.suffix}")
            os.replace(path, aside)
    step = checkpoint_step(checkpoint)
    for logger in loggers:
        drop = getattr(logger, "drop_rows_from", None)
        if drop is not None:
            drop(step)


def checkpoint_step(checkpoint: str) -> int:
    """The global step a checkpoint was saved at (memory-mapped: the tensors are not read)."""
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))


# --------------------------------------------------------------------------- evaluating with a run's config
#: the config groups ``tailsweep-eval`` takes from the training run, to rebuild the trained model
TRAINING_GROUPS = ("data", "model", "loss")
#: overrides of those groups that evaluation can apply on top of the run's config (they do not change the model)
EVAL_SAFE_OVERRIDES = ("data.eval_batch_size", "data.batch_size", "data.num_workers", "data.pin_memory",
                       "data.check_files", "data.cache_images", "data.cache_dir", "model.metrics", "model.metrics.*")


def apply_training_config(cfg: DictConfig, saved: DictConfig, overrides: Sequence[str], source: str) -> None:
    """Replace ``cfg``'s data, model and loss by the training run's (``saved``, from ``source``), re-apply the
    command line's safe overrides of them (batch sizes, workers, metrics) and refuse the others by name, instead
    of dropping them silently (``loss=corn`` cannot apply to a model trained with another head). An override
    that gives the run's own value is no conflict."""
    touched = [o for o in _parse(overrides) if o.key_or_group.split("/")[0].split(".")[0] in TRAINING_GROUPS]

    def differs(override) -> bool:
        key = override.key_or_group.replace("/", ".")
        ours, theirs = (OmegaConf.select(c, key, default=None, throw_on_resolution_failure=False) for c in (cfg, saved))
        plain = [OmegaConf.to_container(v, resolve=False) if OmegaConf.is_config(v) else v for v in (ours, theirs)]
        return plain[0] != plain[1]

    refused = [o.input_line for o in touched if differs(o)
               and not any(fnmatch.fnmatchcase(o.key_or_group, pattern) for pattern in EVAL_SAFE_OVERRIDES)]
    if refused:
        raise ValueError(
            f"tailsweep-eval: cannot apply {refused} with the training config ({source}): data, model and loss "
            f"come from the run, to rebuild the trained model. Of those groups only {list(EVAL_SAFE_OVERRIDES)} "
            "apply (and everything else: split, trainer, callbacks, logger). Drop them, or pass "
            "use_train_config=false to build data, model and loss from the command line.")
    safe = {o.key_or_group: OmegaConf.select(cfg, o.key_or_group) for o in touched if not o.is_delete()}
    from omegaconf import open_dict

    with open_dict(cfg):
        for key in TRAINING_GROUPS:
            cfg[key] = saved[key]
        for key, value in safe.items():
            OmegaConf.update(cfg, key, value, force_add=True)


@contextmanager
def config_origin(config: DictConfig, source: str | None) -> Iterator[None]:
    """Inside, an instantiation that fails on an unexpected keyword names the config key, the class and the file
    the config came from (a run config written by another version of tailsweep), not only the ``TypeError``."""
    from hydra.errors import InstantiationException

    try:
        yield
    except InstantiationException as error:
        found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if source is None or found is None:
            raise
        target = re.search(r"target '([\w.]+)'", str(error))
        target_name = target.group(1) if target else "its _target_"
        groups = [g for g in TRAINING_GROUPS if OmegaConf.select(config, f"{g}._target_", default=None) == target_name]
        key = f"{groups[0] if groups else '<group>'}.{found.group(1)}"
        raise ValueError(f"{key}: {target_name} takes no argument {found.group(1)!r}, but the config from {source} "
                         f"sets it (a run config from another version of tailsweep?). Expected one of the class's "
                         f"parameters; remove {key} from that config or pass use_train_config=false") from None
