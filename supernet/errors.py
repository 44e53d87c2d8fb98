"""The errors the commands report as one line, importable without torch (a command checks
what it was given before it imports torch, which takes 2-3 s on a slow host)."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset is missing or malformed; the message names what and where."""


class CheckpointError(ValueError):
    """A checkpoint or run folder is missing or unreadable; the message names it."""


class TrainingStopped(Exception):
    """SIGINT or SIGTERM asked the run to stop; it stopped at a step boundary and wrote its
    checkpoint, from which ``--resume`` continues exactly as an unbroken run would have."""

    def __init__(self, signame: str, step: int, total: int, checkpoint: Path):
        super().__init__(f"{signame}: stopped at step {step} of {total}; checkpoint {checkpoint}")
        self.signame, self.step, self.total, self.checkpoint = signame, step, total, checkpoint


__all__ = ["DataError", "CheckpointError", "TrainingStopped"]
