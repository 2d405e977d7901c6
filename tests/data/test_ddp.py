"""Two gloo ranks: training shards are disjoint, block-dealt parts of one per-epoch sequence; epochs differ and
reproduce; evaluation shards cover every sample exactly once, each with its group id."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from tailsweep.data.datamodule import TailDataModule
from tests.helpers.ddp import run_distributed

EPOCHS = (0, 1, 0)
SAMPLERS = {"shuffle": {"scheme": "none"},
            "weighted": {"scheme": "explicit", "explicit": [1.0 + c for c in range(30)], "num_samples": 250}}


def _datamodule(manifest: str, sampler: dict) -> TailDataModule:
    return TailDataModule(manifest, task="ordinal", num_classes=30, image_size=16, batch_size=8, eval_batch_size=7,
                          sampler=sampler, seed=5, drop_last=False)


def _rank_work(rank: int, world_size: int, manifest: str) -> dict:
    out: dict = {}
    for name, sampler in SAMPLERS.items():
        datamodule = _datamodule(manifest, sampler)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()  # rank and world size from torch.distributed
        assert (loader.sampler.rank, loader.sampler.world_size) == (rank, world_size)
        sequences = []
        for epoch in EPOCHS:
            loader.sampler.set_epoch(epoch)
            sequences.append(torch.cat([batch["index"] for batch in loader]).numpy())
        batches = torch.tensor([len(loader)])
        dist.all_reduce(batches, op=dist.ReduceOp.MAX)  # every rank runs the same number of steps
        assert int(batches) == len(loader)
        out[name] = sequences
    evaluated = [(b["index"], b["group_id"]) for b in datamodule.val_dataloader()]
    out["val_index"] = torch.cat([i for i, _ in evaluated]).numpy()
    out["val_group"] = torch.cat([g for _, g in evaluated]).numpy()
    return out


@pytest.mark.ddp
def test_two_gloo_ranks_shard_training_and_evaluation(counting_root: Path) -> None:
    manifest = str(counting_root / "manifest.csv")
    ranks = run_distributed(_rank_work, manifest, world_size=2)
    for name, sampler in SAMPLERS.items():
        single = _datamodule(manifest, sampler)
        single.setup("fit")
        reference = single.train_sampler()
        total = reference.num_samples
        block = reference.block_size  # the per-device batch size
        for position, epoch in enumerate(EPOCHS):
            first, second = ranks[0][name][position], ranks[1][name][position]
            # blocks of one batch are dealt round-robin: global step k of the 2 ranks holds exactly the rows of
            # batch k of one process with a batch twice as large
            whole = len(first) // block * block  # the ragged last round is split evenly, checked below
            joined = np.concatenate([np.concatenate([first[k:k + block], second[k:k + block]])
                                     for k in range(0, whole, block)])
            np.testing.assert_array_equal(joined, reference.indices(epoch)[:2 * whole])
            if name == "shuffle":  # a permutation: no sample twice within the whole batches, none left out overall
                assert len(set(joined.tolist())) == joined.size
                assert set(np.concatenate([first, second]).tolist()) == set(range(total))
        assert not np.array_equal(ranks[0][name][0], ranks[0][name][1])  # epochs differ
        np.testing.assert_array_equal(ranks[0][name][0], ranks[0][name][2])  # and reproduce
    val = single.split("val")
    evaluated = np.concatenate([r["val_index"] for r in ranks])
    assert sorted(evaluated.tolist()) == list(range(len(val)))  # each sample once, no padding duplicates
    groups = np.concatenate([r["val_group"] for r in ranks])
    np.testing.assert_array_equal(groups, val.group_ids.numpy()[evaluated])


class Recorder(L.LightningModule):
    """Saves the indices each rank trains and evaluates (module level: ddp_spawn pickles it)."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.layer = nn.Linear(3, 30)
        self.seen: dict[str, list] = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append((self.current_epoch, batch["index"]))
        return self.layer(batch["image"].mean((2, 3))).logsumexp(1).mean()

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append((self.current_epoch, batch["index"]))

    def on_fit_end(self) -> None:
        torch.save(self.seen, Path(self.out_dir) / f"rank{self.global_rank}.pt")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.ddp
@pytest.mark.slow  # ~35 s on 2 shared cores: Lightning's ddp_spawn start-up
def test_lightning_ddp_uses_our_shards(counting_root: Path, tmp_path: Path) -> None:
    """Under Lightning's DDP (use_distributed_sampler=False) the datamodule takes rank and world size from the
    trainer: training shards are the sampler's blocks of each epoch, validation sees every sample once."""
    datamodule = _datamodule(str(counting_root / "manifest.csv"), SAMPLERS["weighted"])
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, num_sanity_val_steps=0)
    trainer.fit(Recorder(str(tmp_path)), datamodule=datamodule)
    seen = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _datamodule(str(counting_root / "manifest.csv"), SAMPLERS["weighted"])
    single.setup("fit")
    reference = single.train_sampler()
    block = datamodule.hparams.batch_size
    for epoch in (0, 1):
        first, second = (torch.cat([i for e, i in s["train"] if e == epoch]).numpy() for s in seen)
        whole = len(first) // block * block  # one batch per rank per step: step k = batch k of one process
        joined = np.concatenate([np.concatenate([first[k:k + block], second[k:k + block]])
                                 for k in range(0, whole, block)])
        np.testing.assert_array_equal(joined, reference.indices(epoch)[: 2 * whole])
        evaluated = np.concatenate([torch.cat([i for e, i in s["val"] if e == epoch]).numpy() for s in seen])
        assert sorted(evaluated.tolist()) == list(range(len(single.split("val"))))
