"""Save the full training state every epoch and resume from the newest one.

Both handlers add the engine they are attached to as ``"trainer"`` in the saved / restored
objects: listing the trainer in its own handlers' config would be a circular reference.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = ["ResumeFromLatest", "TrainingStateSaver", "latest_checkpoint"]

logger = logging.getLogger(__name__)
_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``*checkpoint_epoch=N.pt`` file with the largest N in ``ckpt_dir``, or None."""
    found = [(int(m[1]), path) for path in Path(ckpt_dir).glob("*checkpoint_epoch=*.pt") if (m := _EPOCH.search(path.name))]
    return max(found)[1] if found else None


class TrainingStateSaver:
    """MONAI's CheckpointSaver for network, optimizer, LR scheduler and trainer, every epoch.

    Keeps only the newest ``checkpoint_epoch=N.pt`` in ``save_dir``.

    Args:
        save_dir: checkpoint folder.
        objects: ``{"model": ..., "optimizer": ..., "lr_scheduler": ...}``.
    """

    def __init__(self, save_dir: str | Path, objects: dict) -> None:
        self.save_dir = str(save_dir)
        self.objects = objects

    def attach(self, engine: Engine) -> None:
        objects = {**self.objects, "trainer": engine}
        CheckpointSaver(self.save_dir, objects, save_interval=1, n_saved=1, epoch_level=True).attach(engine)


class ResumeFromLatest:
    """Attach MONAI's CheckpointLoader for the newest epoch checkpoint when ``enabled``.

    It restores the network, optimizer, LR scheduler and the trainer's epoch / iteration, so
    training continues where it stopped. With no checkpoint yet it logs that and starts fresh.

    Args:
        ckpt_dir: folder of :class:`TrainingStateSaver` checkpoints.
        objects: the objects to restore, as given to the saver.
        enabled: the ``--resume`` switch.
    """

    def __init__(self, ckpt_dir: str | Path, objects: dict, enabled: bool = False) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.objects = objects
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            logger.warning("resume requested but %s holds no epoch checkpoint; starting from scratch", self.ckpt_dir)
            return
        logger.info("resuming from %s", path)
        objects = {**self.objects, "trainer": engine}
        CheckpointLoader(load_path=str(path), load_dict=objects, map_location="cpu").attach(engine)
