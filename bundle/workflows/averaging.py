"""An exponential moving average of the training weights, written as a bundle checkpoint.

On a few hundred images the last weights of a run carry the noise of its last batches; their
running average (Polyak averaging, as ignite's ``EMAHandler`` keeps it) is the usual cheaper
alternative to picking an epoch on a validation split too small to pick by. ``ema_momentum`` in
pretrain.yaml switches it on; ``model_selection: ema`` then makes the average ``models/model.pt``
(the last weights go to ``model_last.pt``), otherwise it is written beside as ``model_ema.pt``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from torch import nn

from bundle.networks import save_checkpoint
from bundle.networks.model_file import ModelDescription

__all__ = ["AverageUpdates", "WeightAverage"]

logger = logging.getLogger(__name__)


class WeightAverage:
    """Keeps ``average ← (1 − m) · average + m · weights`` after every iteration and saves it at the end.

    An ignite handler (``attach``) with a state dict, so that the training state files of
    ``--resume`` carry the average. With momentum 0 it does nothing and its state is empty.

    Args:
        network: the trained network (its buffers, e.g. batch-norm statistics, are copied, not averaged).
        momentum: m, in [0, 1); 0 switches the average off.
        save_dir: where the checkpoint goes.
        filename: its name.
        description: the network's ``ModelDescription``, stored with the weights.
    """

    def __init__(
        self, network: nn.Module, momentum: float, save_dir: str | Path, filename: str, description: ModelDescription | None
    ) -> None:
        momentum = float(momentum)
        if not 0 <= momentum < 1:
            raise ValueError(f"ema_momentum must be in [0, 1) (0: no weight average), got {momentum}.")
        self.ema = EMAHandler(network, momentum=momentum) if momentum else None
        self.path = Path(save_dir) / filename
        self.description = description
        self._resumed = False

    @property
    def network(self) -> nn.Module | None:
        """The averaged network (in eval mode), or None when switched off."""
        return None if self.ema is None else self.ema.ema_model

    def attach(self, engine: Engine) -> None:
        """Update the average after every iteration of ``engine`` and save it when it completes."""
        if self.ema is None:
            return
        # after the resume handler, which configs attach first: it loads at STARTED too
        engine.add_event_handler(Events.STARTED, self._start)
        self.ema.attach(engine, name="ema_momentum")
        engine.add_event_handler(Events.COMPLETED, self.save)

    def save(self, engine: Engine | None = None) -> None:
        """Write the average as a bundle checkpoint (rank 0 only)."""
        if self.ema is None or idist.get_rank() > 0:
            return
        save_checkpoint(self.path, self.ema.ema_model, self.description)
        logger.info("weight average (momentum %g) saved to %s", self.ema.momentum, self.path)

    def state_dict(self) -> dict:
        """The averaged weights (empty when switched off), for the resumable training state."""
        return {} if self.ema is None else self.ema.ema_model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Resume the average; an empty state (saved with the average off) leaves it to restart."""
        if self.ema is not None and state:
            self.ema.ema_model.load_state_dict(state)
            self._resumed = True

    def _start(self, engine: Engine) -> None:
        """Start the average at the weights training starts from (an ``init_ckpt``, or resumed weights
        whose state file held no average), unless the average itself was resumed."""
        if not self._resumed:
            self.ema.ema_model.load_state_dict(self.ema.model.state_dict())


class AverageUpdates:
    """The training handler of a :class:`WeightAverage` that a config defines once and references twice
    (the handlers and the resumable training state): MONAI's workflow property checks read every
    train handler as a ``_target_`` mapping, so the list holds this, not a reference.

    Args:
        average: the weight average to update and save.
    """

    def __init__(self, average: WeightAverage) -> None:
        self.average = average

    def attach(self, engine: Engine) -> None:
        """Attach the average's updates and final save to ``engine``."""
        self.average.attach(engine)
