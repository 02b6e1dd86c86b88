"""Save the full training state every epoch and resume from the newest one.

Both handlers add the engine they are attached to as ``"trainer"`` in the saved / restored
objects: listing the trainer in its own handlers' config would be a circular reference. The
saver writes atomically (temporary file, then rename): MONAI's CheckpointSaver does not, and a
run killed while saving would leave a truncated file that cannot be resumed from.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, global_step_from_engine
from monai.handlers import CheckpointLoader

from bundle.flags import as_flag

__all__ = ["ResumeFromLatest", "TrainingStateSaver", "latest_checkpoint"]

logger = logging.getLogger(__name__)
_EPOCH = re.compile(r"^checkpoint_(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``checkpoint_N.pt`` file (N = epoch) with the largest N in ``ckpt_dir``, or None."""
    found = [(int(m[1]), path) for path in Path(ckpt_dir).glob("checkpoint_*.pt") if (m := _EPOCH.match(path.name))]
    return max(found)[1] if found else None


class TrainingStateSaver:
    """Saves network, optimizer, LR scheduler and trainer after every epoch, atomically.

    Keeps only the newest ``checkpoint_N.pt`` (N = epoch) in ``save_dir``.

    Args:
        save_dir: checkpoint folder.
        objects: ``{"model": ..., "optimizer": ..., "lr_scheduler": ...}``.
    """

    def __init__(self, save_dir: str | Path, objects: dict) -> None:
        self.save_dir = str(save_dir)
        self.objects = objects

    def attach(self, engine: Engine) -> None:
        objects = {**self.objects, "trainer": engine}
        saver = DiskSaver(self.save_dir, atomic=True, create_dir=True, require_empty=False)
        checkpoint = Checkpoint(objects, saver, n_saved=1, global_step_transform=global_step_from_engine(engine))
        engine.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)


class ResumeFromLatest:
    """Attach MONAI's CheckpointLoader for the newest epoch checkpoint when ``enabled``.

    It restores the network, optimizer, LR scheduler and the trainer's epoch / iteration, so
    training continues where it stopped. With no checkpoint yet it logs that and starts fresh.

    Args:
        ckpt_dir: folder of :class:`TrainingStateSaver` checkpoints.
        objects: the objects to restore, as given to the saver.
        enabled: the ``--resume`` switch (``bundle.flags.as_flag``: ``--resume false`` is off).
    """

    def __init__(self, ckpt_dir: str | Path, objects: dict, enabled: bool | str = False) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.objects = objects
        self.enabled = as_flag(enabled, "resume")

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            logger.warning("resume requested but %s holds no epoch checkpoint; starting from scratch", self.ckpt_dir)
            return
        logger.info("resuming from %s", path)
        objects = {**self.objects, "trainer": engine}
        # a state written by an earlier version lacks the objects added since (the weight average);
        # memory-mapped, the keys are read without the tensors, which CheckpointLoader reads at STARTED
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True).keys()
        missing = sorted(set(objects) - set(stored))
        if missing:
            logger.warning("%s holds no %s: they start afresh", path, missing)
        kept = {name: value for name, value in objects.items() if name in stored}
        CheckpointLoader(load_path=str(path), load_dict=kept, map_location="cpu").attach(engine)
