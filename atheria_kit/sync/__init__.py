"""Persistence across sessions: mirror checkpoints to Drive, any fsspec storage or a Kaggle dataset,
and resume from the newest valid copy (local, remote, a Kaggle input folder or a shared Drive link).

Unreachable is never taken for empty, the remote is never pruned by a run that does not own it, and the
end of a session waits for the final sync at most a bounded time. See docs/persistence.md.
"""

from atheria_kit.sync.kaggle import (
    KaggleAuthError,
    KaggleDatasetTarget,
    kaggle_api,
    kaggle_credentials_source,
)
from atheria_kit.sync.remote_lease import TargetLeaseStore
from atheria_kit.sync.resume import RemoteUnavailableError, ResumeResult, resume_from_best_source
from atheria_kit.sync.sources import GoogleDriveLinkSource, KaggleInputSource, find_checkpoint_root
from atheria_kit.sync.targets import (
    DirectoryTarget,
    DriveDisconnectedError,
    FsspecTarget,
    InsufficientSpaceError,
    LocalFileChangedError,
    SourceUnavailableError,
    SyncError,
    SyncSource,
    SyncTarget,
    colab_drive_target,
    colab_remounter,
)
from atheria_kit.sync.worker import (
    ARCHIVE_DIR,
    RemoteOwnedByAnotherRunError,
    RemoteState,
    RetryPolicy,
    SyncSchedule,
    SyncWorker,
    archive_remote,
)

__all__ = [
    "ARCHIVE_DIR",
    "DirectoryTarget",
    "DriveDisconnectedError",
    "FsspecTarget",
    "GoogleDriveLinkSource",
    "InsufficientSpaceError",
    "KaggleAuthError",
    "KaggleDatasetTarget",
    "KaggleInputSource",
    "LocalFileChangedError",
    "RemoteOwnedByAnotherRunError",
    "RemoteState",
    "RemoteUnavailableError",
    "ResumeResult",
    "RetryPolicy",
    "SourceUnavailableError",
    "SyncError",
    "SyncSchedule",
    "SyncSource",
    "SyncTarget",
    "SyncWorker",
    "TargetLeaseStore",
    "archive_remote",
    "colab_drive_target",
    "colab_remounter",
    "find_checkpoint_root",
    "kaggle_api",
    "kaggle_credentials_source",
    "resume_from_best_source",
]
