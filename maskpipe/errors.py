"""The exceptions a user can act on. Each message names the file or object, what is wrong,
and what to do; the CLI prints them without a traceback."""

from __future__ import annotations


class MaskpipeError(Exception):
    """Base of every error that is the user's input, not a bug."""


class DataLayoutError(MaskpipeError):
    """The data root, a profile folder, a CSV or an image is not what the layout expects."""


class StorageError(MaskpipeError):
    """MinIO / S3 or a local path cannot be read or written (credentials, bucket, endpoint)."""


class CheckpointError(MaskpipeError):
    """A checkpoint is missing, corrupt, of another task or another architecture."""


class WeightsUnavailableError(MaskpipeError):
    """Pretrained weights can be neither downloaded nor found locally."""


class TrainingError(MaskpipeError):
    """The data or the saved state do not allow this training run."""
