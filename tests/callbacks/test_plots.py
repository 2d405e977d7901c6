"""PredictionPlots in real Trainers: what it collects, when it draws, where the pictures go, DDP gathering."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from tailsweep.callbacks.plots import PredictionPlots
from tailsweep.reporting.figures import Predictions


class TinyModule(L.LightningModule):
    """A linear model on 3 features whose evaluation steps return what TailClassifier returns."""

    def __init__(self, task: str = "ordinal", num_classes: int = 4, corrected: bool = False,
                 half_on_rank_1: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(3, num_classes)
        self.task, self.num_classes, self.corrected, self.half_on_rank_1 = task, num_classes, corrected, half_on_rank_1

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.layer(batch["x"]).logsumexp(dim=1).mean()

    def _evaluate(self, batch: dict) -> dict:
        logits = self.layer(batch["x"])
        probabilities = logits.sigmoid() if self.task == "multilabel" else logits.softmax(dim=1)
        out = {"probabilities": probabilities, "target": batch["target"], "group_id": batch["group_id"]}
        if self.corrected:
            out["corrected_probabilities"] = probabilities.flip(1)
        if self.half_on_rank_1 and self.global_rank == 1:  # uneven sizes across ranks
            out = {key: value[: len(value) // 2] for key, value in out.items()}
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(task: str, n: int = 24, num_classes: int = 4, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    if task in ("ordinal", "multiclass"):
        target = torch.arange(n) % num_classes
    elif task == "soft":
        target = torch.rand(n, num_classes, generator=generator).softmax(dim=1)
    else:
        target = (torch.rand(n, num_classes, generator=generator) < 0.4).float()
    rows = [{"x": x[i], "target": target[i], "group_id": torch.tensor(i // 4)} for i in range(n)]
    return DataLoader(rows, batch_size=batch_size)


class RecordingPlots(PredictionPlots):
    """Keeps what it drew (and saves it to ``record_dir`` when given: the DDP test reads it back)."""

    def __init__(self, record_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record_dir = record_dir
        self.drawn: list[tuple[str, int, Predictions]] = []

    def draw(self, trainer: L.Trainer, stage: str, predictions: Predictions) -> dict[str, Path]:
        self.drawn.append((stage, trainer.current_epoch, predictions))
        if self.record_dir is not None:
            torch.save({"stage": stage, "group_id": predictions.group_id, "target": predictions.target,
                        "probabilities": predictions.probabilities},
                       Path(self.record_dir) / f"{stage}_{trainer.current_epoch}.pt")
        return super().draw(trainer, stage, predictions)


def _trainer(tmp_path: Path, callback: PredictionPlots, max_epochs: int = 1, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, callbacks=[callback], default_root_dir=tmp_path, accelerator="cpu",
                     devices=1, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     logger=kwargs.pop("logger", False), **kwargs)


def test_draws_every_n_epochs_and_at_test_into_files_and_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = RecordingPlots(every_n_epochs=2)
    loggers = [CSVLogger(tmp_path), TensorBoardLogger(tmp_path, name="tb", version="")]
    trainer = _trainer(tmp_path, callback, max_epochs=3, logger=loggers, num_sanity_val_steps=1)
    model, loader = TinyModule(), _loader("ordinal")
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    trainer.test(model, dataloaders=loader)
    # validation at epochs 0, 1, 2 (and the sanity check): drawn after epoch index 1 only; test always
    assert [(stage, epoch) for stage, epoch, _ in callback.drawn] == [("val", 1), ("test", 3)]
    names = {"confusion_matrix", "class_recall", "group_sums", "label_histogram", "reliability"}
    assert {p.name for p in (tmp_path / "plots" / "val").iterdir()} == {f"{n}_epoch001.png" for n in names}
    assert {p.name for p in (tmp_path / "plots" / "test").iterdir()} == {f"{n}_epoch003.png" for n in names}
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert {f"val/plots/{n}" for n in names} | {f"test/plots/{n}" for n in names} <= set(events.Tags()["images"])
    # what was drawn is every evaluation sample, once
    _, _, predictions = callback.drawn[-1]
    assert predictions.probabilities.shape == (24, 4) and predictions.target.tolist() == list(range(4)) * 6
    assert predictions.group_id.tolist() == [i // 4 for i in range(24)]


@pytest.mark.parametrize(("task", "pictures"), [
    ("soft", {"confusion_matrix", "class_recall", "group_sums", "label_histogram", "reliability"}),
    ("multilabel", {"label_ap", "label_histogram", "reliability"}),
])
def test_other_tasks_and_corrected_probabilities(tmp_path: Path, task: str, pictures: set[str]) -> None:
    callback = RecordingPlots(stages=["test"])
    _trainer(tmp_path, callback).test(TinyModule(task=task, corrected=True), dataloaders=_loader(task))
    (_, _, predictions), = callback.drawn
    assert predictions.corrected_probabilities is not None
    torch.testing.assert_close(predictions.corrected_probabilities, predictions.probabilities.flip(1))
    assert {p.name.split("_epoch")[0] for p in (tmp_path / "plots" / "test").iterdir()} == pictures


def test_the_module_class_names_reach_the_pictures_and_the_bins_are_the_logged_ones(tmp_path: Path) -> None:
    from tailsweep.metrics import CALIBRATION_BINS

    callback = RecordingPlots(stages=["test"])
    model = TinyModule()
    model.class_names = ("none", "one", "two", "many")
    _trainer(tmp_path, callback).test(model, dataloaders=_loader("ordinal"))
    (_, _, predictions), = callback.drawn
    assert predictions.class_names == ("none", "one", "two", "many")
    assert callback.num_bins == CALIBRATION_BINS
    model.class_names = ("too", "few")  # not one name per output: indices instead
    _trainer(tmp_path, callback).test(model, dataloaders=_loader("ordinal"))
    assert callback.drawn[-1][2].class_names is None


def test_max_samples_bounds_what_is_kept(tmp_path: Path) -> None:
    callback = RecordingPlots(max_samples=10, dirpath=tmp_path / "elsewhere")
    _trainer(tmp_path, callback).test(TinyModule(), dataloaders=_loader("ordinal", batch_size=8))
    (_, _, predictions), = callback.drawn
    assert predictions.target.tolist() == list(range(4)) * 2 + [0, 1]  # the first 10 samples
    assert (tmp_path / "elsewhere" / "test" / "reliability_epoch000.png").is_file()


def test_never_draws_validation_when_every_n_epochs_is_zero(tmp_path: Path) -> None:
    callback = RecordingPlots(every_n_epochs=0)
    loader = _loader("ordinal")
    _trainer(tmp_path, callback, max_epochs=2).fit(TinyModule(), train_dataloaders=loader, val_dataloaders=loader)
    assert callback.drawn == []


def test_a_step_that_returns_nothing_is_a_clear_error() -> None:
    callback = PredictionPlots()
    callback._start(SimpleNamespace(world_size=1), "val", True)
    with pytest.raises(ValueError, match="PredictionPlots: the evaluation step must return a dict with"):
        callback._collect(None)
    with pytest.raises(ValueError, match=r"got \['target'\]"):
        callback._collect({"target": torch.zeros(2)})


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(every_n_epochs=-1), "every_n_epochs must be >= 0, got -1"),
    (dict(max_samples=0), "max_samples must be >= 1, got 0"),
    (dict(stages=["train"]), r"stages must be among \('val', 'test'\), got \['train'\]"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match="PredictionPlots: " + match):
        PredictionPlots(**kwargs)


@pytest.mark.ddp
def test_ddp_gathers_uneven_ranks_on_rank_zero(tmp_path: Path) -> None:
    """Two CPU processes (gloo); rank 1 returns half of each batch: rank 0 draws the union, once."""
    callback = RecordingPlots(record_dir=str(tmp_path), stages=["test"])
    # fork: the same gloo collectives as ddp/ddp_spawn, without re-importing torch in each process (1 s, not 20 s)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", callbacks=[callback], logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(TinyModule(half_on_rank_1=True), dataloaders=_loader("ordinal", n=16, batch_size=4))
    records = sorted(tmp_path.glob("*.pt"))
    assert [p.name for p in records] == ["test_0.pt"]  # rank 0 only
    record = torch.load(records[0])
    # the distributed sampler deals samples 0, 2, 4, ... to rank 0 and 1, 3, 5, ... to rank 1 in batches of 4
    rank0 = list(range(0, 16, 2))
    rank1 = [1, 3, 9, 11]  # first half of each of rank 1's two batches [1, 3, 5, 7] and [9, 11, 13, 15]
    assert sorted(record["group_id"].tolist()) == sorted(i // 4 for i in rank0 + rank1)
    assert sorted(record["target"].tolist()) == sorted(i % 4 for i in rank0 + rank1)
    assert record["probabilities"].shape == (12, 4)
    assert len(list((tmp_path / "plots" / "test").glob("*.png"))) == 5
