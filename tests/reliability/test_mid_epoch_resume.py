"""Exact mid-epoch resume: the sampler's position and the random generators' states travel in the checkpoint
(issue 17)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tailsweep.data.samplers import ShardedRandomSampler
from tailsweep.data.transforms import BatchTransform
from tailsweep.train import train


@pytest.mark.parametrize("weighted", [False, True])
def test_a_sampler_resumed_mid_epoch_yields_the_rest_of_the_epoch(weighted: bool) -> None:
    weights = torch.linspace(0.1, 1.0, 50) if weighted else None
    full = ShardedRandomSampler(50, weights, seed=7, rank=1, world_size=2, block_size=4)
    full.set_epoch(3)
    expected = list(full)
    resumed = ShardedRandomSampler(50, weights, seed=7, rank=1, world_size=2, block_size=4)
    resumed.load_state_dict({"epoch": 3, "start": 8})
    resumed.set_epoch(3)
    assert list(resumed) == expected[8:]
    resumed.set_epoch(4)  # the request was for one iteration only
    full.set_epoch(4)
    assert list(resumed) == list(full)
    other = ShardedRandomSampler(50, weights, seed=7)
    other.load_state_dict({"epoch": 2, "start": 8})
    other.set_epoch(3)
    assert len(list(other)) == 50  # a request for another epoch starts at 0


def test_skipping_batches_of_flips_replays_the_flip_sequence() -> None:
    images = torch.randint(0, 255, (4, 3, 5, 5), dtype=torch.uint8)
    straight, resumed = (BatchTransform([0.5] * 3, [0.2] * 3, hflip=True, vflip=True) for _ in range(2))
    straight.reseed(11)
    outputs = [straight(images) for _ in range(3)]
    resumed.reseed(11)
    resumed.skip(2, batch_size=4)
    assert torch.equal(resumed(images), outputs[2])


LIMITS = ["trainer.limit_train_batches=6", "trainer.limit_val_batches=1", "trainer.limit_test_batches=2",
          "trainer.max_epochs=2", "data.batch_size=16", "callbacks.plots=null", "callbacks.early_stopping=null",
          "trainer.deterministic=true", "seed=5", "model.backbone_kwargs.width=8"]


def test_sigterm_mid_epoch_then_resume_ends_with_the_uninterrupted_metrics(compose_train) -> None:
    straight_cfg = compose_train(LIMITS)
    expected = train(straight_cfg)
    run = Path(straight_cfg.paths.output_dir)
    shutil.rmtree(run)
    run.mkdir()
    term = ["+callbacks.term._target_=tests.helpers.faults.SignalAtStep", "+callbacks.term.step=3",
            "+callbacks.term.signal_name=SIGTERM"]
    with pytest.raises(SIGTERMException):
        train(compose_train([*LIMITS, *term]))
    last = run / "checkpoints" / "last.ckpt"
    # signalled after batch 3's check: stopped after batch 4, mid-epoch 0
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = train(compose_train([*LIMITS, f"ckpt_path={last}"]))
    # the resume is exact, so Lightning's "dataloader is not resumable" warning would mislead
    assert not [w for w in caught if "not resumable" in str(w.message)], [str(w.message) for w in caught]
    keys = sorted(k for k in expected if k.startswith(("val/", "test/")))
    assert len(keys) > 20
    differ = {k: (got[k], expected[k]) for k in keys if got[k] != pytest.approx(expected[k], rel=1e-5, abs=1e-7)}
    assert not differ


def test_each_rank_restores_its_own_states_and_another_world_size_is_named() -> None:
    from tailsweep.callbacks.fault_tolerance import rank_states

    ranks = [{"torch": torch.tensor([r])} for r in range(2)]
    saved = {"world_size": 2, "ranks": ranks}
    assert [rank_states(saved, r, 2) for r in range(2)] == ranks
    with pytest.warns(UserWarning, match="states of 2 rank.* this run has 3"):
        assert rank_states(saved, 1, 3) is ranks[1]
    with pytest.warns(UserWarning, match="this run has 3"):
        assert rank_states(saved, 2, 3) is None  # no states of its own: it keeps its freshly seeded generators
    old = {"torch": torch.tensor([7])}  # a checkpoint of the older format: one state, restored on every rank
    assert rank_states(old, 1, 2) is old and rank_states(None, 0, 1) is None
