"""``EarlyStopping`` that never stops before ``min_epochs``: the opt-in stop of ``callbacks=early_stopping``."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping


class MinEpochsEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping`` (patience on the monitor) with a floor of ``min_epochs`` epochs.

    Lightning's own floor is ``Trainer(min_epochs=...)``; keeping it on the callback puts the whole opt-in in one
    config entry (``callbacks=early_stopping``). As with the Trainer's floor, the epochs before it still count
    (best score, patience); only the stop waits.
    ``stopped_epoch > 0`` after ``fit`` says the run stopped early (written to ``metrics.json`` as
    ``stopped_early``).
    """

    def __init__(self, *args: Any, min_epochs: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(min_epochs, bool) or not isinstance(min_epochs, int) or min_epochs < 0:
            raise ValueError(f"MinEpochsEarlyStopping: min_epochs must be an integer >= 0, got {min_epochs!r}")
        self.min_epochs = min_epochs

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        super()._run_early_stopping_check(trainer)
        if trainer.current_epoch + 1 < self.min_epochs and self.stopped_epoch:
            trainer.should_stop = False
            self.stopped_epoch = 0
