"""How a batch and a file end up, as the database stores them: a batch's status, a file's rejection reason.

A leaf module (it imports nothing of the project), so that the batch protocol, the walk and the DICOM readers
take them from one place. Both are ``StrEnum``s: a member is its stored text (in SQL parameters, in COPY, in
status output, compared with a string), and that text never changes.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BatchStatus", "RejectReason", "RETRYABLE"]


class BatchStatus(StrEnum):
    """Where a batch stands; ``importing`` is never committed (a worker's advisory lock shows it)."""

    QUEUED = "queued"
    IMPORTING = "importing"
    DONE = "done"
    EMPTY = "empty"
    FAILED = "failed"


class RejectReason(StrEnum):
    """Why a file is recorded in rejected_file, not as an instance (its ``reason`` column)."""

    # Found by the walk (and UNREADABLE, VANISHED, SYMLINK, NOT_A_REGULAR_FILE by the readers too).
    UNREADABLE = "unreadable"
    UNREADABLE_DIRECTORY = "unreadable-directory"
    VANISHED = "vanished"
    TOO_DEEP = "too-deep"
    SYMLINK = "symlink"
    NOT_A_REGULAR_FILE = "not-a-regular-file"
    # Found by the readers.
    EMPTY_FILE = "empty-file"
    TRUNCATED = "truncated"
    NOT_DICOM = "not-dicom"
    INVALID_DICOM = "invalid-dicom"
    DICOMDIR = "dicomdir"
    NO_SOP_INSTANCE_UID = "no-sop-instance-uid"
    MISSING_UID = "missing-uid"
    INVALID_UID = "invalid-uid"
    OVERSIZED_VALUE = "oversized-value"
    HEADER_TOO_LARGE = "header-too-large"
    # Found by the merge: another file holds the instance.
    DUPLICATE = "duplicate"


# Rejections that say nothing about the file's content: the file is read again at every import of its folder.
RETRYABLE = (RejectReason.UNREADABLE, RejectReason.UNREADABLE_DIRECTORY, RejectReason.VANISHED)
