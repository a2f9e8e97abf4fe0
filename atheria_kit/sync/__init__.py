"""Persistence across sessions: mirror checkpoints to Drive, any fsspec storage or a Kaggle dataset,
and resume from the newest valid copy (local, remote, a Kaggle input folder or a shared Drive link).

See docs/persistence.md.
"""

from atheria_kit.sync.kaggle import (
    KaggleAuthError,
    KaggleDatasetTarget,
    kaggle_api,
    kaggle_credentials_source,
)
from atheria_kit.sync.resume import ResumeResult, resume_from_best_source
from atheria_kit.sync.sources import GoogleDriveLinkSource, KaggleInputSource, find_checkpoint_root
from atheria_kit.sync.targets import (
    DirectoryTarget,
    DriveDisconnectedError,
    FsspecTarget,
    InsufficientSpaceError,
    LocalFileChangedError,
    SyncError,
    SyncSource,
    SyncTarget,
    colab_drive_target,
    colab_remounter,
)
from atheria_kit.sync.worker import RetryPolicy, SyncSchedule, SyncWorker

__all__ = [
    "DirectoryTarget",
    "DriveDisconnectedError",
    "FsspecTarget",
    "GoogleDriveLinkSource",
    "InsufficientSpaceError",
    "KaggleAuthError",
    "KaggleDatasetTarget",
    "KaggleInputSource",
    "LocalFileChangedError",
    "ResumeResult",
    "RetryPolicy",
    "SyncError",
    "SyncSchedule",
    "SyncSource",
    "SyncTarget",
    "SyncWorker",
    "colab_drive_target",
    "colab_remounter",
    "find_checkpoint_root",
    "kaggle_api",
    "kaggle_credentials_source",
    "resume_from_best_source",
]
