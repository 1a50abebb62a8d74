"""Reading one file's DICOM header with pydicom: an importable instance, or a rejection with its reason."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import stat
import warnings
from collections.abc import Callable
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from sendit_watcher.dicom import lean, values
from sendit_watcher.dicom.dicomjson import dataset_to_json, is_multi_value, jsonb_safe
from sendit_watcher.dicom.elements import FALLBACK, Decoder, deferred, dictionary_vr
from sendit_watcher.dicom.tags import (
    DICOMDIR_SOP_CLASS,
    DIRECTORY_RECORD_SEQUENCE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    KEY_TAGS,
    MEDIA_STORAGE_SOP_CLASS_UID,
    READ_TAGS,
    SPECIFIC_CHARACTER_SET,
    TRANSFER_SYNTAX_UID,
    UID_TAGS,
    Instance,
)
from sendit_watcher.dicom.values import KEY_LIMIT_BYTES, VALUE_LIMIT, clean, too_large_detail
from sendit_watcher.errors import one_line
from sendit_watcher.outcomes import RejectReason
from sendit_watcher.walk import FileEntry, Rejection, open_beneath

__all__ = ["Instance", "read_instance", "quiet_pydicom"]

# What a main-tags-only read asks pydicom for; it skips the values of everything else.
_SPECIFIC_TAGS = [SPECIFIC_CHARACTER_SET, *(t.tag for t in READ_TAGS), DIRECTORY_RECORD_SEQUENCE]
_OTHER_TAGS = tuple(t for t in READ_TAGS if t not in UID_TAGS)
_SOP_INSTANCE_UID = next(t for t in UID_TAGS if t.column == "sop_instance_uid")


def quiet_pydicom() -> None:
    """Keep pydicom's per-file warnings out of the log (only pydicom's own): every problem is recorded on its file."""
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    settings = getattr(pydicom.config, "settings", None)
    if settings is not None and hasattr(settings, "reading_validation_mode"):
        settings.reading_validation_mode = pydicom.config.IGNORE


def read_instance(folder: str, entry: FileEntry, full_header: bool) -> Instance | Rejection:
    """Read ``entry`` (relative to ``folder``) and classify it; never raises for a bad file."""
    def reject(reason: RejectReason, detail: str) -> Rejection:
        return Rejection(entry.path, reason, detail, entry.size, entry.mtime_ns)

    if entry.size == 0:
        return reject(RejectReason.EMPTY_FILE, "zero bytes")
    fast = lean.read_fields(folder, entry.path, full_header) if lean.ENABLED else None
    if fast is not None:  # the lean reader only ever answers for an importable instance
        too_large = fast.pop(lean.TOO_LARGE, False)
        read = Instance(path=entry.path, size=entry.size, mtime_ns=entry.mtime_ns, **fast)
        problem = _key_problem(read) or ((RejectReason.HEADER_TOO_LARGE, too_large_detail()) if too_large else None)
        return reject(*problem) if problem else _bounded(read, reject)
    try:
        dataset, forced = _read(folder, entry.path, None if full_header else _SPECIFIC_TAGS)
    except _NotRegular as exc:
        return reject(RejectReason.NOT_A_REGULAR_FILE, str(exc))
    except FileNotFoundError:
        return reject(RejectReason.VANISHED, "deleted before it could be read")
    except PermissionError as exc:
        return reject(RejectReason.UNREADABLE, exc.strerror or str(exc))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return reject(RejectReason.SYMLINK, "replaced by a symbolic link before it was read; not followed")
        if exc.errno == errno.ENOTDIR:
            return reject(RejectReason.VANISHED, "a folder above it was replaced before it could be read")
        return reject(*_classify_failure(exc))
    except EOFError as exc:
        return reject(RejectReason.TRUNCATED, one_line(exc) if str(exc).strip() else "file ends inside the header")
    except InvalidDicomError as exc:
        return reject(RejectReason.NOT_DICOM, one_line(exc))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed input
        return reject(*_classify_failure(exc))
    too_long = _deferred_key(dataset)
    if too_long:
        return reject(RejectReason.OVERSIZED_VALUE, too_long)
    try:
        fields = Decoder(dataset)
        instance = _instance(entry, fields, full_header)
    except Exception as exc:  # noqa: BLE001 - a value that cannot be decoded
        return reject(RejectReason.INVALID_DICOM, f"{type(exc).__name__}: {one_line(exc)}")
    if instance is None:
        try:
            return reject(*_missing(fields, forced))
        except Exception as exc:  # noqa: BLE001 - a file meta value pydicom cannot convert (0002,0002)
            return reject(RejectReason.INVALID_DICOM, f"{type(exc).__name__}: {one_line(exc)}")
    problem = _key_problem(instance)
    return reject(*problem) if problem else _bounded(instance, reject)




def _bounded(instance: Instance, reject: Callable[[RejectReason, str], Rejection]) -> Instance | Rejection:
    """The instance with every element value longer than VALUE_LIMIT left out of its JSON header (the element
    stays, with its VR): such values are bulk data in all but VR. A header still longer than HEADER_LIMIT (in
    UTF-8) is a rejection, ``header-too-large``: it would not fit a row (SQLSTATE 54000 for the whole folder)."""
    header = instance.header
    if header is None:
        return instance
    if len(header) > VALUE_LIMIT:
        model = json.loads(header)
        if _drop_long_values(model):
            header = json.dumps(model, ensure_ascii=False, separators=(",", ":"))
            instance = dataclasses.replace(instance, header=header)
        del model
    if len(header) > values.HEADER_LIMIT // 4 and len(header.encode("utf-8")) > values.HEADER_LIMIT:
        return reject(RejectReason.HEADER_TOO_LARGE, too_large_detail())
    return instance


def _drop_long_values(model: dict[str, Any]) -> bool:
    dropped = False
    for element in model.values():
        value = element.get("Value")
        if value is None:
            continue
        if element.get("vr") == "SQ":
            dropped = any([_drop_long_values(item) for item in value if isinstance(item, dict)]) or dropped
        elif not values.kept_in_header(value):
            del element["Value"]
            dropped = True
    return dropped


class _NotRegular(Exception):
    """The path no longer names a regular file (swapped for a FIFO, a device or a link)."""


def _read(folder: str, path: str, tags: list[int] | None) -> tuple[Any, bool]:
    """The dataset of the file at ``path`` below ``folder`` (no link followed on the way), and whether it had to
    be forced (no 'DICM' preamble)."""
    fd = open_beneath(folder, path)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotRegular("not a regular file when opened")
        try:
            dataset, forced = _dcmread(handle, tags, False), False
        except InvalidDicomError:
            handle.seek(0)  # no 'DICM' preamble: a bare dataset is still acceptable if it is one
            dataset, forced = _dcmread(handle, tags, True), True
        _read_deferred_sequences(dataset, handle)
        return dataset, forced


def _dcmread(handle: Any, tags: list[int] | None, force: bool) -> Any:
    """pydicom's read of the header; a top-level value longer than VALUE_LIMIT is not read (defer_size: it is
    seeked past), and never will be: it is not stored."""
    return pydicom.dcmread(handle, stop_before_pixels=True, force=force, specific_tags=tags, defer_size=VALUE_LIMIT)


def _read_deferred_sequences(dataset: Any, handle: Any) -> None:
    """Read the top-level sequences of defined length that dcmread deferred (defer_size takes any element), from
    the file still open: a sequence's items are stored, whatever their size."""
    elements = getattr(dataset, "_dict", {})
    for tag, raw in list(elements.items()):
        if isinstance(raw, RawDataElement) and deferred(raw) and _sequence_vr(int(tag), raw):
            handle.seek(raw.value_tell)
            value = handle.read(raw.length)
            if len(value) != raw.length:
                raise EOFError("file ends inside a sequence")
            elements[tag] = raw._replace(value=value)


def _sequence_vr(tag: int, raw: RawDataElement) -> bool:
    """True for an element pydicom reads as a sequence: SQ in the file, or in the dictionary for an implicit VR
    element or one written as UN."""
    vr = str(getattr(raw.VR, "value", raw.VR)) if raw.VR else None
    return vr == "SQ" or (vr in (None, "UN") and dictionary_vr(tag) == "SQ")


def _classify_failure(exc: Exception) -> tuple[RejectReason, str]:
    text = one_line(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return RejectReason.UNREADABLE, exc.strerror or text
    if isinstance(exc, RecursionError):
        return RejectReason.INVALID_DICOM, "sequences nested too deeply"
    if "end of file" in text.lower() or "truncat" in text.lower():
        return RejectReason.TRUNCATED, text
    return RejectReason.INVALID_DICOM, f"{type(exc).__name__}: {text}"


def _missing(fields: Decoder, forced: bool) -> tuple[RejectReason, str]:
    dataset = fields.dataset
    if _media_sop_class(dataset) == DICOMDIR_SOP_CLASS or DIRECTORY_RECORD_SEQUENCE in dataset:
        return RejectReason.DICOMDIR, "a DICOMDIR holds directory records, not an instance"
    if not _column(fields, _SOP_INSTANCE_UID.tag, True):
        if forced and not _looks_like_dicom(dataset):
            return RejectReason.NOT_DICOM, "no DICOM data elements found"
        return RejectReason.NO_SOP_INSTANCE_UID, f"{_SOP_INSTANCE_UID.name} is missing or empty"
    absent = [t.name for t in UID_TAGS if t is not _SOP_INSTANCE_UID and not _column(fields, t.tag, True)]
    return RejectReason.MISSING_UID, " and ".join(absent) + " missing or empty"


def _looks_like_dicom(dataset: Any) -> bool:
    """A forced read of a non-DICOM file yields junk tags; a real dataset has some group 0008 tag."""
    return any(0x00080000 <= tag <= 0x0008FFFF for tag in dataset.keys())


def _media_sop_class(dataset: Any) -> str | None:
    meta = getattr(dataset, "file_meta", None)
    value = meta.get(MEDIA_STORAGE_SOP_CLASS_UID) if meta is not None else None
    return str(value.value) if value is not None else None


def _instance(entry: FileEntry, fields: Decoder, full_header: bool) -> Instance | None:
    dataset = fields.dataset
    uids = values.columns(lambda tag: _raw_text(fields, tag), UID_TAGS)
    if not all(uids.values()) or _media_sop_class(dataset) == DICOMDIR_SOP_CLASS:
        return None
    return Instance(
        path=entry.path, size=entry.size, mtime_ns=entry.mtime_ns, transfer_syntax_uid=_transfer_syntax(dataset),
        **uids, **values.columns(lambda tag: _raw_text(fields, tag), _OTHER_TAGS),
        header=_header_json(dataset) if full_header else None,
    )


def _column(fields: Decoder, tag: int, key: bool) -> str | None:
    """A main tag's value as a text column (values.text)."""
    return values.text(_raw_text(fields, tag), key)


def _raw_text(fields: Decoder, tag: int) -> str | None:
    """A value as text as DICOM writes it (multiple values joined by backslash), or None when absent: from
    its bytes where the fast path can, else from pydicom's value."""
    fast = fields.text(tag)
    if fast is not FALLBACK:
        return None if fast is None else str(fast)
    element = fields.dataset.get(tag)
    value = None if element is None else element.value
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if is_multi_value(value):
        return "\\".join(str(v) for v in value)
    return str(value)


def _transfer_syntax(dataset: Any) -> str | None:
    meta = getattr(dataset, "file_meta", None)
    element = meta.get(TRANSFER_SYNTAX_UID) if meta is not None else None
    if element is not None and element.value:
        return clean(str(element.value))
    encoding = getattr(dataset, "original_encoding", None)  # pydicom 3: (implicit, little endian)
    implicit, little = encoding if encoding else (dataset.is_implicit_VR, dataset.is_little_endian)
    if implicit is None:
        return None
    return IMPLICIT_VR_LE if implicit else (EXPLICIT_VR_LE if little else EXPLICIT_VR_BE)


def _header_json(dataset: Any) -> str:
    """The DICOM JSON text PostgreSQL's jsonb takes: checked once, and only in the rare case that it holds a
    non-finite number, a NUL or a lone surrogate, written again in their documented representation."""
    model = dataset_to_json(dataset)
    try:
        text = json.dumps(model, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if "\\u0000" not in text:
            text.encode("utf-8")
            return text
    except (ValueError, UnicodeEncodeError):
        pass
    return json.dumps(jsonb_safe(model), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


_UID_CHARACTERS = re.compile(r"[\x20-\x7e]*")  # printable ASCII: the same text from every byte string it can be


def _key_problem(instance: Instance) -> tuple[RejectReason, str] | None:
    """Why a main-tag value cannot be a database key, as a rejection (reason, detail) that names the tag, never
    the value: too long to index, or a UID with characters no UID has (a NUL, bytes that do not decode), which
    could make two different UIDs one key."""
    oversized = _oversized_key(instance)
    if oversized:
        return RejectReason.OVERSIZED_VALUE, oversized
    for key in UID_TAGS:
        if not _UID_CHARACTERS.fullmatch(getattr(instance, key.column)):
            return RejectReason.INVALID_UID, f"{key.name} holds a NUL, a control character or bytes that are not ASCII"
    return None


def _deferred_key(dataset: Any) -> str | None:
    """Why a key main tag too long to have been read (longer than VALUE_LIMIT) cannot be a database key."""
    elements = getattr(dataset, "_dict", {})
    for key in KEY_TAGS:
        raw = elements.get(key.tag)
        if isinstance(raw, RawDataElement) and deferred(raw):
            return f"{key.name} is {raw.length:,} bytes long; at most {KEY_LIMIT_BYTES} can be a database key"
    return None


def _oversized_key(instance: Instance) -> str | None:
    """Why a main-tag value cannot be a database key (too long to index), naming the tag, never the value."""
    for key in KEY_TAGS:
        size = len(getattr(instance, key.column).encode("utf-8"))
        if size > KEY_LIMIT_BYTES:
            return f"{key.name} is {size:,} bytes long; at most {KEY_LIMIT_BYTES} can be a database key"
    return None
