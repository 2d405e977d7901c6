"""Callbacks that make long runs survive interruptions: a checkpoint on SIGTERM, reproducible epochs on resume."""

from __future__ import annotations

import random
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tailsweep.utils.checkpointing import CHECKPOINT_DIR, LAST_CHECKPOINT
from tailsweep.utils.rank_failures import name_dead_ranks, this_process, watch_ranks


class CheckpointOnSigterm(Callback):
    """On SIGTERM (a cluster pre-empting the job), every rank stops at the same batch and ``last.ckpt`` is saved.

    Lightning 2.6's own hand-over is not safe with several ranks: its handler broadcasts inside the signal
    handler (a collective at an arbitrary point of the step, which pairs with whatever collective the other rank
    is in), and each rank then raises at the end of its own step, so a rank that has not seen the signal waits in
    the next step's collectives while the other saves: the run hung (RELIABILITY.md). Here, from
    ``on_train_start``, the SIGTERM handler only notes the signal (and forwards it once to the ranks this process
    launched, as Lightning's does); after every ``every_n_steps``-th training batch the ranks agree on whether any of
    them was signalled (a max all-reduce of one flag on the CPU, through a gloo group, so no device sync), and then
    all of them save ``checkpoints/last.ckpt`` (a collective save: ``ResumeMidEpoch`` gathers each rank's
    generators) and raise Lightning's ``SIGTERMException`` together. ``run_task`` turns it into exit code 143.
    Resume with ``ckpt_path=last`` to continue in the same run directory, mid-epoch and exactly.

    A signal before ``on_train_start`` (during set-up or the sanity check) is left to Lightning; on one process the
    checkpoint is then saved in ``on_exception``.
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if int(every_n_steps) < 1:
            raise ValueError(f"CheckpointOnSigterm: every_n_steps must be >= 1, got {every_n_steps!r}")
        self.every_n_steps = int(every_n_steps)
        self.requested = False  # a SIGTERM reached this process
        self.saved = False
        self._group: Any = None  # the process group the flag is reduced over (None: the default one)
        self._previous: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.requested = self.saved = False
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank runs on_train_start, so the (collective) group creation is in step
            gloo = torch.distributed.get_backend() == "gloo"
            self._group = None if gloo else torch.distributed.new_group(backend="gloo")
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; Lightning's stays
        # the handler Lightning composed holds its broadcasting notifier: keep only what was there before it
        original = getattr(getattr(trainer, "_signal_connector", None), "_original_handlers", {})
        self._previous = original.get(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._make_handler(trainer))  # Lightning's teardown puts the original back

    def _make_handler(self, trainer: L.Trainer) -> Any:
        def note_sigterm(signum: int, frame: Any) -> None:
            if not self.requested:
                launcher = trainer.strategy.launcher
                if launcher is not None:
                    launcher.kill(signum)  # the ranks started from this process get it too
                print(f"SIGTERM received by rank {trainer.global_rank}: stopping after the current training batch",
                      file=sys.stderr, flush=True)
            self.requested = True
            if callable(self._previous):
                self._previous(signum, frame)
        return note_sigterm

    def _any_rank_requested(self, trainer: L.Trainer) -> bool:
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return self.requested
        flag = torch.tensor([int(self.requested)], dtype=torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps or not self._any_rank_requested(trainer):
            return
        self._save(trainer)
        raise SIGTERMException()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if (not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit" or self.saved
                or trainer.world_size > 1):  # a lone rank's save would wait for the others forever
            return
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        checkpoint = trainer.checkpoint_callback
        directory = Path(checkpoint.dirpath) if checkpoint and checkpoint.dirpath else (
            Path(trainer.default_root_dir) / CHECKPOINT_DIR)
        path = directory / LAST_CHECKPOINT
        trainer.save_checkpoint(path, weights_only=False)
        self.saved = True
        rank_zero_info(f"SIGTERM: saved {path} at epoch {trainer.current_epoch}, step {trainer.global_step}")


class EpochSeeder(Callback):
    """Re-seed Python, NumPy and torch at every training epoch from ``(seed, epoch)``.

    Lightning checkpoints do not hold the random generators' states, so without this a resumed run draws other
    augmentations and dropout masks than an uninterrupted one. With it, resuming from an end-of-epoch checkpoint
    replays the next epochs exactly (with ``num_workers=0`` or non-persistent workers).
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is None:
            return
        epoch_seed = (int(self.seed) * 1_000_003 + trainer.current_epoch) % 2**32
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)


#: scheduler state that is progress (restored from the checkpoint), not hyperparameters (taken from the config)
_SCHEDULER_PROGRESS = frozenset({"last_epoch", "_step_count", "_last_lr", "base_lrs", "_get_lr_called_within_step",
                                 "_is_initial", "verbose", "optimizer"})


class ScheduleOverTheNewBudget(Callback):
    """On resume, the learning-rate schedule keeps its progress but takes its hyperparameters from the config.

    Lightning restores the whole scheduler state, hyperparameters included: "train longer"
    (``ckpt_path=last trainer.max_epochs=2`` on a 1-epoch run) kept cosine's ``T_max=1`` and trained the new epoch
    at lr 0. The rule: the epochs already trained stay as they were, and epoch ``e`` of the resumed run gets the
    learning rate the schedule built for the new budget gives epoch ``e`` (cosine: ``eta_min + (lr0 - eta_min)
    (1 + cos(pi e / T_max)) / 2`` with the new ``T_max = max_epochs``), which is above 0 for every ``e < T_max``.
    The configured schedulers are read in ``on_fit_start`` (before Lightning restores their state) and their
    hyperparameters put back in ``on_train_start`` (after), with the learning rate of the current epoch.
    """

    def __init__(self) -> None:
        self._configured: list[dict] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._configured = [dict(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        for config, configured in zip(trainer.lr_scheduler_configs, self._configured, strict=False):
            scheduler = config.scheduler
            restored = scheduler.state_dict()
            changed = {k: v for k, v in configured.items() if k not in _SCHEDULER_PROGRESS and restored.get(k) != v}
            if not changed:
                continue
            scheduler.__dict__.update(changed)
            closed_form = getattr(scheduler, "_get_closed_form_lr", None)
            if closed_form is not None:
                rates = closed_form()
                for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
                    group["lr"] = rate
                scheduler._last_lr = list(rates)
            rank_zero_info(f"resume: {type(scheduler).__name__} continues at epoch {scheduler.last_epoch} with the "
                           f"config's {changed} (the checkpoint had {({k: restored.get(k) for k in changed})}); "
                           f"lr now {[group['lr'] for group in scheduler.optimizer.param_groups]}")


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def rank_states(saved: dict[str, Any] | None, rank: int, world_size: int) -> dict[str, Any] | None:
    """The generator states rank ``rank`` of ``world_size`` restores from a checkpoint's ``saved`` entry.

    ``{"world_size": W, "ranks": [...]}``: the rank's own states; of another world size, those of the same rank
    when the checkpoint has it (else none: the rank keeps its freshly seeded generators), with a warning naming
    both world sizes. An older checkpoint's single state (rank 0's) is restored on every rank, as it was saved.
    """
    if saved is None:
        return None
    if "ranks" not in saved:
        return saved
    ranks, saved_world = saved["ranks"], int(saved["world_size"])
    if saved_world != world_size:
        rank_zero_warn(f"resume mid-epoch: the checkpoint holds the random generators' states of {saved_world} "
                       f"rank(s), this run has {world_size}; ranks 0..{min(saved_world, world_size) - 1} restore "
                       "their own, the others keep their freshly seeded generators (the resumed epoch is not an "
                       "exact replay)")
    return ranks[rank] if rank < len(ranks) else None


class ResumeMidEpoch(Callback):
    """Resume a checkpoint saved mid-epoch (SIGTERM, ``every_n_train_steps``) exactly where it stopped.

    Lightning restores the loop's progress (``k`` of ``n`` batches of the epoch done) but restarts a plain
    ``DataLoader`` from its first batch, so the resumed epoch trained on other samples than an uninterrupted one.
    Here the checkpoint also holds the global random generators' states (Python, NumPy, torch, CUDA), and on
    resume the training sampler (``load_state_dict``: epoch and start position ``k * batch_size``) yields the
    epoch's remaining samples while the generators continue from their saved states at the first resumed batch
    (after ``EpochSeeder`` re-seeded the epoch).

    Each rank keeps its own states: Lightning writes the checkpoint on rank 0, but ``on_save_checkpoint`` runs on
    every rank (a save is collective), so the states are gathered there (``all_gather_object``) and stored as
    ``{"world_size": W, "ranks": [states of rank 0, ..., rank W-1]}``; on load rank ``r`` restores ``ranks[r]``.
    The ranks' generators differ whenever they draw different amounts (an augmentation that depends on the
    image, an uneven last batch, a per-rank seed). A checkpoint of another world size restores what fits (the
    ranks it has) and warns; a checkpoint of the older format (one state for all) is restored on every rank.

    Lightning's "your dataloader is not resumable" warning (it looks for ``state_dict`` on the ``DataLoader``, not
    on its sampler) is silenced for fit: this callback resumes the sampler and logs what it did, or, for a sampler
    that keeps no position, says that the epoch restarts.
    """

    STATE_KEY = "tailsweep_rng_states"
    LIGHTNING_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"

    def __init__(self) -> None:
        self._states: dict[str, Any] | None = None
        self._restore_at_next_batch = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            warnings.filterwarnings("ignore", message=self.LIGHTNING_WARNING)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        states = _rng_states()
        ranks = [states]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, states)
        checkpoint[self.STATE_KEY] = {"world_size": len(ranks), "ranks": ranks}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._states = rank_states(checkpoint.get(self.STATE_KEY), trainer.global_rank, trainer.world_size)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress
        done = progress.current.completed
        if progress.total.started == progress.total.ready == progress.total.processed == progress.total.completed + 1:
            # saved in on_train_batch_end (every_n_train_steps, a callback): Lightning counts that batch as done when
            # its epoch loop resets, after on_train_start
            done += 1
        total = trainer.num_training_batches
        if trainer.ckpt_path is None or not 0 < done < total:
            return  # a fresh run or an end-of-epoch checkpoint: the next epoch starts from its beginning
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if not hasattr(sampler, "load_state_dict"):
            rank_zero_info(f"resume mid-epoch: the training sampler {type(sampler).__name__} keeps no position; "
                           f"the epoch restarts from its first batch ({done} of {total} were done)")
            return
        sampler.load_state_dict({"epoch": trainer.current_epoch, "start": done * loader.batch_size})
        self._restore_at_next_batch = self._states is not None
        rank_zero_info(f"resume mid-epoch: epoch {trainer.current_epoch} continues at batch {done} of {total}")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if self._restore_at_next_batch:
            _set_rng_states(self._states)
            self._restore_at_next_batch = False


class NameDeadRanks(Callback):
    """Record every rank's process at setup, so that a run whose peer rank died says which one and how.

    At ``setup`` (every rank, a collective like the setup around it) the ranks' pids and hosts are gathered, and the
    launching process adds Lightning's ``Popen`` objects of the ranks it started (their return codes give the
    signal). ``on_exception`` names the ranks that are gone, with this rank's global step
    (``tailsweep.utils.rank_failures``); ``run_task`` writes it to ``failure.json``.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size < 2 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        ranks: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(ranks, this_process(trainer.global_rank))
        watch_ranks(trainer.global_rank, trainer.world_size, ranks, getattr(trainer.strategy.launcher, "procs", ()))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        name_dead_ranks(exception, step=trainer.global_step)
