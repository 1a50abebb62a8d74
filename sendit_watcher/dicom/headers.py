"""Reading one file's DICOM header with pydicom: an importable instance, or a rejection with its reason."""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import logging
import math
import os
import re
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from sendit_watcher.dicom import dicomjson, lean
from sendit_watcher.dicom.dicomjson import (
    VALUE_LIMIT,
    dataset_to_json,
    is_multi_value,
    jsonb_safe,
    storable,
    too_large_detail,
)
from sendit_watcher.dicom.elements import FALLBACK, Decoder, _dictionary_vr, deferred
from sendit_watcher.errors import one_line
from sendit_watcher.walk import FileEntry, Rejection, open_beneath

__all__ = ["Instance", "read_instance", "quiet_pydicom"]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_IMPLICIT_LE, _EXPLICIT_LE, _EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"

# Tags of the main columns, cited as in the standard.
SOP_CLASS_UID = 0x00080016            # (0008,0016)
SOP_INSTANCE_UID = 0x00080018         # (0008,0018)
STUDY_DATE = 0x00080020               # (0008,0020)
SERIES_DATE = 0x00080021              # (0008,0021)
CONTENT_DATE = 0x00080023             # (0008,0023)
STUDY_TIME = 0x00080030               # (0008,0030)
ACCESSION_NUMBER = 0x00080050         # (0008,0050)
MODALITY = 0x00080060                 # (0008,0060)
REFERRING_PHYSICIAN_NAME = 0x00080090  # (0008,0090)
STUDY_DESCRIPTION = 0x00081030        # (0008,1030)
SERIES_DESCRIPTION = 0x0008103E       # (0008,103E)
PATIENT_NAME = 0x00100010             # (0010,0010)
PATIENT_ID = 0x00100020               # (0010,0020)
ISSUER_OF_PATIENT_ID = 0x00100021     # (0010,0021)
PATIENT_BIRTH_DATE = 0x00100030       # (0010,0030)
PATIENT_SEX = 0x00100040              # (0010,0040)
BODY_PART_EXAMINED = 0x00180015       # (0018,0015)
STUDY_INSTANCE_UID = 0x0020000D       # (0020,000D)
SERIES_INSTANCE_UID = 0x0020000E      # (0020,000E)
STUDY_ID = 0x00200010                 # (0020,0010)
SERIES_NUMBER = 0x00200011            # (0020,0011)
INSTANCE_NUMBER = 0x00200013          # (0020,0013)
DIRECTORY_RECORD_SEQUENCE = 0x00041220  # (0004,1220)
SPECIFIC_CHARACTER_SET = 0x00080005   # (0008,0005)

# What a main-tags-only read asks pydicom for; it skips the values of everything else.
MAIN_TAGS = [SPECIFIC_CHARACTER_SET, SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_DATE, SERIES_DATE, CONTENT_DATE,
             STUDY_TIME, ACCESSION_NUMBER, MODALITY, REFERRING_PHYSICIAN_NAME, STUDY_DESCRIPTION, SERIES_DESCRIPTION,
             PATIENT_NAME, PATIENT_ID, ISSUER_OF_PATIENT_ID, PATIENT_BIRTH_DATE, PATIENT_SEX, BODY_PART_EXAMINED,
             STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, STUDY_ID, SERIES_NUMBER, INSTANCE_NUMBER,
             DIRECTORY_RECORD_SEQUENCE]


@dataclass(frozen=True)
class Instance:
    """The columns of one importable instance, with its patient, study and series."""

    path: str
    size: int
    mtime_ns: int
    sop_instance_uid: str
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    instance_number: int | None
    content_date: str | None
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_date: str | None
    series_description: str | None
    body_part_examined: str | None
    study_instance_uid: str
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    header: str | None  # DICOM JSON text, or None when full headers are off


def quiet_pydicom() -> None:
    """Keep pydicom's per-file warnings out of the log (only pydicom's own): every problem is recorded on its file."""
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    settings = getattr(pydicom.config, "settings", None)
    if settings is not None and hasattr(settings, "reading_validation_mode"):
        settings.reading_validation_mode = pydicom.config.IGNORE


def read_instance(folder: str, entry: FileEntry, full_header: bool) -> Instance | Rejection:
    """Read ``entry`` (relative to ``folder``) and classify it; never raises for a bad file."""
    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(entry.path, reason, detail, entry.size, entry.mtime_ns)

    if entry.size == 0:
        return reject("empty-file", "zero bytes")
    fast = lean.read_fields(folder, entry.path, full_header) if lean.ENABLED else None
    if fast is not None:  # the lean reader only ever answers for an importable instance
        too_large = fast.pop(lean.TOO_LARGE, False)
        read = Instance(path=entry.path, size=entry.size, mtime_ns=entry.mtime_ns, **fast)
        problem = _key_problem(read) or (("header-too-large", too_large_detail()) if too_large else None)
        return reject(*problem) if problem else _bounded(read, reject)
    try:
        dataset, forced = _read(folder, entry.path, None if full_header else MAIN_TAGS)
    except _NotRegular as exc:
        return reject("not-a-regular-file", str(exc))
    except FileNotFoundError:
        return reject("vanished", "deleted before it could be read")
    except PermissionError as exc:
        return reject("unreadable", exc.strerror or str(exc))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return reject("symlink", "replaced by a symbolic link before it was read; not followed")
        if exc.errno == errno.ENOTDIR:
            return reject("vanished", "a folder above it was replaced before it could be read")
        return reject(*_classify_failure(exc))
    except EOFError as exc:
        return reject("truncated", one_line(exc) if str(exc).strip() else "file ends inside the header")
    except InvalidDicomError as exc:
        return reject("not-dicom", one_line(exc))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed input
        return reject(*_classify_failure(exc))
    too_long = _deferred_key(dataset)
    if too_long:
        return reject("oversized-value", too_long)
    try:
        fields = Decoder(dataset)
        instance = _instance(entry, fields, full_header)
    except Exception as exc:  # noqa: BLE001 - a value that cannot be decoded
        return reject("invalid-dicom", f"{type(exc).__name__}: {one_line(exc)}")
    if instance is None:
        try:
            return reject(*_missing(fields, forced))
        except Exception as exc:  # noqa: BLE001 - a file meta value pydicom cannot convert (0002,0002)
            return reject("invalid-dicom", f"{type(exc).__name__}: {one_line(exc)}")
    problem = _key_problem(instance)
    return reject(*problem) if problem else _bounded(instance, reject)




def _bounded(instance: Instance, reject: Callable[[str, str], Rejection]) -> Instance | Rejection:
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
    if len(header) > dicomjson.HEADER_LIMIT // 4 and len(header.encode("utf-8")) > dicomjson.HEADER_LIMIT:
        return reject("header-too-large", too_large_detail())
    return instance


def _drop_long_values(model: dict[str, Any]) -> bool:
    dropped = False
    for element in model.values():
        value = element.get("Value")
        if value is None:
            continue
        if element.get("vr") == "SQ":
            dropped = any([_drop_long_values(item) for item in value if isinstance(item, dict)]) or dropped
        elif len(json.dumps(value, ensure_ascii=False)) > VALUE_LIMIT:
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
    return vr == "SQ" or (vr in (None, "UN") and _dictionary_vr(tag) == "SQ")


def _classify_failure(exc: Exception) -> tuple[str, str]:
    text = one_line(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return "unreadable", exc.strerror or text
    if isinstance(exc, RecursionError):
        return "invalid-dicom", "sequences nested too deeply"
    if "end of file" in text.lower() or "truncat" in text.lower():
        return "truncated", text
    return "invalid-dicom", f"{type(exc).__name__}: {text}"


def _missing(fields: Decoder, forced: bool) -> tuple[str, str]:
    dataset = fields.dataset
    if _media_sop_class(dataset) == DICOMDIR_SOP_CLASS or DIRECTORY_RECORD_SEQUENCE in dataset:
        return "dicomdir", "a DICOMDIR holds directory records, not an instance"
    if not _text(fields, SOP_INSTANCE_UID):
        if forced and not _looks_like_dicom(dataset):
            return "not-dicom", "no DICOM data elements found"
        return "no-sop-instance-uid", "SOPInstanceUID (0008,0018) is missing or empty"
    absent = [name for tag, name in ((STUDY_INSTANCE_UID, "StudyInstanceUID (0020,000D)"),
                                     (SERIES_INSTANCE_UID, "SeriesInstanceUID (0020,000E)"))
              if not _text(fields, tag)]
    return "missing-uid", " and ".join(absent) + " missing or empty"


def _looks_like_dicom(dataset: Any) -> bool:
    """A forced read of a non-DICOM file yields junk tags; a real dataset has some group 0008 tag."""
    return any(0x00080000 <= tag <= 0x0008FFFF for tag in dataset.keys())


def _media_sop_class(dataset: Any) -> str | None:
    meta = getattr(dataset, "file_meta", None)
    value = meta.get((0x0002, 0x0002)) if meta is not None else None
    return str(value.value) if value is not None else None


_KEY_TAGS = frozenset({PATIENT_ID, ISSUER_OF_PATIENT_ID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID})


def _instance(entry: FileEntry, fields: Decoder, full_header: bool) -> Instance | None:
    dataset = fields.dataset
    sop_instance_uid = _text(fields, SOP_INSTANCE_UID)
    study_uid, series_uid = _text(fields, STUDY_INSTANCE_UID), _text(fields, SERIES_INSTANCE_UID)
    if not (sop_instance_uid and study_uid and series_uid) or _media_sop_class(dataset) == DICOMDIR_SOP_CLASS:
        return None
    return Instance(
        path=entry.path, size=entry.size, mtime_ns=entry.mtime_ns,
        sop_instance_uid=sop_instance_uid, sop_class_uid=_text(fields, SOP_CLASS_UID),
        transfer_syntax_uid=_transfer_syntax(dataset),
        instance_number=_integer(fields, INSTANCE_NUMBER), content_date=_date(fields, CONTENT_DATE),
        series_instance_uid=series_uid, modality=_text(fields, MODALITY),
        series_number=_integer(fields, SERIES_NUMBER), series_date=_date(fields, SERIES_DATE),
        series_description=_text(fields, SERIES_DESCRIPTION), body_part_examined=_text(fields, BODY_PART_EXAMINED),
        study_instance_uid=study_uid, study_date=_date(fields, STUDY_DATE), study_time=_text(fields, STUDY_TIME),
        accession_number=_text(fields, ACCESSION_NUMBER), study_id=_text(fields, STUDY_ID),
        study_description=_text(fields, STUDY_DESCRIPTION),
        referring_physician_name=_text(fields, REFERRING_PHYSICIAN_NAME),
        patient_id=_text(fields, PATIENT_ID) or "", issuer_of_patient_id=_text(fields, ISSUER_OF_PATIENT_ID) or "",
        patient_name=_text(fields, PATIENT_NAME), patient_birth_date=_date(fields, PATIENT_BIRTH_DATE),
        patient_sex=_text(fields, PATIENT_SEX),
        header=_header_json(dataset) if full_header else None,
    )


def _text(fields: Decoder, tag: int) -> str | None:
    """A value as text as DICOM writes it (multiple values joined by backslash), without NULs (in a key, a NUL
    becomes U+FFFD: two keys that differ only by a NUL stay two)."""
    fast = fields.text(tag)
    if fast is not FALLBACK:
        return _clean(str(fast), tag).strip() or None if fast is not None else None
    element = fields.dataset.get(tag)
    value = None if element is None else element.value
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif is_multi_value(value):
        value = "\\".join(str(v) for v in value)
    text = _clean(str(value), tag).strip()
    return text or None


def _clean(text: str, tag: int = 0) -> str:
    """Text PostgreSQL can store: NUL characters removed (replaced by U+FFFD in a key), lone surrogates replaced
    by U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd" if tag in _KEY_TAGS else "")
    return storable(text)


def _integer(fields: Decoder, tag: int) -> int | None:
    """The first value of an IS element as an int4 column: None when it is not a whole number that fits
    ("1.5", "1e999", "NaN", "99999999999"); "12", "+12" and "12.0" are 12."""
    text = _text(fields, tag)
    first = text.split("\\")[0].strip() if text else ""
    try:
        number = int(first)
    except ValueError:
        try:
            real = float(first)
        except ValueError:
            return None
        if not (math.isfinite(real) and real.is_integer()):
            return None
        number = int(real)
    return number if -2**31 <= number < 2**31 else None


def _date(fields: Decoder, tag: int) -> str | None:
    text = _text(fields, tag)
    if not text or len(text) < 8:
        return None
    try:
        return datetime.date(int(text[0:4]), int(text[4:6]), int(text[6:8])).isoformat()
    except ValueError:
        return None


def _transfer_syntax(dataset: Any) -> str | None:
    meta = getattr(dataset, "file_meta", None)
    element = meta.get((0x0002, 0x0010)) if meta is not None else None
    if element is not None and element.value:
        return _clean(str(element.value))
    encoding = getattr(dataset, "original_encoding", None)  # pydicom 3: (implicit, little endian)
    implicit, little = encoding if encoding else (dataset.is_implicit_VR, dataset.is_little_endian)
    if implicit is None:
        return None
    return _IMPLICIT_LE if implicit else (_EXPLICIT_LE if little else _EXPLICIT_BE)


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


# Main-tag values that go into a unique index: PostgreSQL cannot index a row of more than about 2.7 kB.
KEY_LIMIT_BYTES = 512
_KEYS = (("patient_id", "PatientID (0010,0020)"), ("issuer_of_patient_id", "IssuerOfPatientID (0010,0021)"),
         ("study_instance_uid", "StudyInstanceUID (0020,000D)"), ("series_instance_uid",
                                                                  "SeriesInstanceUID (0020,000E)"),
         ("sop_instance_uid", "SOPInstanceUID (0008,0018)"))


_KEY_TAG_NAMES = ((PATIENT_ID, _KEYS[0][1]), (ISSUER_OF_PATIENT_ID, _KEYS[1][1]), (STUDY_INSTANCE_UID, _KEYS[2][1]),
                  (SERIES_INSTANCE_UID, _KEYS[3][1]), (SOP_INSTANCE_UID, _KEYS[4][1]))
_UIDS = _KEYS[2:]
_UID_CHARACTERS = re.compile(r"[\x20-\x7e]*")  # printable ASCII: the same text from every byte string it can be


def _key_problem(instance: Instance) -> tuple[str, str] | None:
    """Why a main-tag value cannot be a database key, as a rejection (reason, detail) that names the tag, never
    the value: too long to index, or a UID with characters no UID has (a NUL, bytes that do not decode), which
    could make two different UIDs one key."""
    oversized = _oversized_key(instance)
    if oversized:
        return "oversized-value", oversized
    for field, name in _UIDS:
        if not _UID_CHARACTERS.fullmatch(getattr(instance, field)):
            return "invalid-uid", f"{name} holds a NUL, a control character or bytes that are not ASCII"
    return None


def _deferred_key(dataset: Any) -> str | None:
    """Why a key main tag too long to have been read (longer than VALUE_LIMIT) cannot be a database key."""
    elements = getattr(dataset, "_dict", {})
    for tag, name in _KEY_TAG_NAMES:
        raw = elements.get(tag)
        if isinstance(raw, RawDataElement) and deferred(raw):
            return f"{name} is {raw.length:,} bytes long; at most {KEY_LIMIT_BYTES} can be a database key"
    return None


def _oversized_key(instance: Instance) -> str | None:
    """Why a main-tag value cannot be a database key (too long to index), naming the tag, never the value."""
    for field, name in _KEYS:
        size = len(getattr(instance, field).encode("utf-8"))
        if size > KEY_LIMIT_BYTES:
            return f"{name} is {size:,} bytes long; at most {KEY_LIMIT_BYTES} can be a database key"
    return None
