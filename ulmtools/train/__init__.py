"""Training networks on sparse stores (``ulm train``).

:mod:`.config` holds the named schedules and the frozen run configuration,
:mod:`.data` reads movies and fine-grid targets from a ``sparse`` store,
:mod:`.loss` the soft Dice on sparse predictions, :mod:`.loop` the Adam loop
with validation, :mod:`.checkpoint` the model store written each epoch
and the resume state, :mod:`.distributed` training on several processes under
torchrun, and :mod:`.run` the whole of ``ulm train`` as one call
(:func:`ulmtools.train.run.train`).
"""

from ulmtools.train.config import SCHEDULES, Schedule, TrainConfig, resolve_schedule
from ulmtools.train.data import SparseMovies, dilate
from ulmtools.train.loop import TrainState, fit, new_state, run_epoch
from ulmtools.train.loss import pooled_targets, sparse_dice_loss

__all__ = [
    "SCHEDULES",
    "Schedule",
    "SparseMovies",
    "TrainConfig",
    "TrainState",
    "dilate",
    "fit",
    "new_state",
    "pooled_targets",
    "resolve_schedule",
    "run_epoch",
    "sparse_dice_loss",
]
