"""The tags and UIDs the readers look for, declared once: above all the table of main tags (which column each
fills, and of what kind), from which the Instance, both readers' main-tag maps and the importer's staging table
are derived."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

__all__ = ["Kind", "MainTag", "MAIN_TAGS", "READ_TAGS", "UID_TAGS", "KEY_TAGS", "SQL_TYPES", "Instance",
           "SPECIFIC_CHARACTER_SET", "TRANSFER_SYNTAX_UID", "MEDIA_STORAGE_SOP_CLASS_UID",
           "DIRECTORY_RECORD_SEQUENCE", "DICOMDIR_SOP_CLASS", "IMPLICIT_VR_LE", "EXPLICIT_VR_LE", "EXPLICIT_VR_BE"]

SPECIFIC_CHARACTER_SET = 0x00080005  # (0008,0005)
TRANSFER_SYNTAX_UID = 0x00020010  # (0002,0010), of the file meta group
MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002  # (0002,0002), of the file meta group
DIRECTORY_RECORD_SEQUENCE = 0x00041220  # (0004,1220): a DICOMDIR's
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"


class Kind(Enum):
    """What a main tag's text becomes (the rules are in ``values``)."""

    TEXT = "text"  # the text, or None when empty
    KEY = "key"  # text in a database key: '' when absent, a NUL kept as U+FFFD, at most values.KEY_LIMIT_BYTES
    UID = "uid"  # a key without which the file is no instance; printable ASCII only
    DATE = "date"  # a DA value as an ISO date, or None
    INTEGER = "integer"  # the first value of an IS element as an int4, or None


SQL_TYPES = {Kind.TEXT: "text", Kind.KEY: "text", Kind.UID: "text", Kind.DATE: "date", Kind.INTEGER: "integer"}
_ANNOTATIONS = {Kind.TEXT: "str | None", Kind.KEY: "str", Kind.UID: "str", Kind.DATE: "str | None",
                Kind.INTEGER: "int | None"}


@dataclass(frozen=True)
class MainTag:
    """A tag whose value has a column of its own."""

    tag: int
    column: str
    kind: Kind
    keyword: str  # as in the standard

    @property
    def name(self) -> str:
        """How messages name it: 'PatientID (0010,0020)'."""
        return f"{self.keyword} ({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"


# The main tags, level by level as the schema holds them (patient, study, series, instance): Instance's fields
# and the staging columns are in this order, and so is the order in which rejections name a key.
MAIN_TAGS = (
    MainTag(0x00100020, "patient_id", Kind.KEY, "PatientID"),
    MainTag(0x00100021, "issuer_of_patient_id", Kind.KEY, "IssuerOfPatientID"),
    MainTag(0x00100010, "patient_name", Kind.TEXT, "PatientName"),
    MainTag(0x00100030, "patient_birth_date", Kind.DATE, "PatientBirthDate"),
    MainTag(0x00100040, "patient_sex", Kind.TEXT, "PatientSex"),
    MainTag(0x0020000D, "study_instance_uid", Kind.UID, "StudyInstanceUID"),
    MainTag(0x00080020, "study_date", Kind.DATE, "StudyDate"),
    MainTag(0x00080030, "study_time", Kind.TEXT, "StudyTime"),
    MainTag(0x00080050, "accession_number", Kind.TEXT, "AccessionNumber"),
    MainTag(0x00200010, "study_id", Kind.TEXT, "StudyID"),
    MainTag(0x00081030, "study_description", Kind.TEXT, "StudyDescription"),
    MainTag(0x00080090, "referring_physician_name", Kind.TEXT, "ReferringPhysicianName"),
    MainTag(0x0020000E, "series_instance_uid", Kind.UID, "SeriesInstanceUID"),
    MainTag(0x00080060, "modality", Kind.TEXT, "Modality"),
    MainTag(0x00200011, "series_number", Kind.INTEGER, "SeriesNumber"),
    MainTag(0x00080021, "series_date", Kind.DATE, "SeriesDate"),
    MainTag(0x0008103E, "series_description", Kind.TEXT, "SeriesDescription"),
    MainTag(0x00180015, "body_part_examined", Kind.TEXT, "BodyPartExamined"),
    MainTag(0x00080018, "sop_instance_uid", Kind.UID, "SOPInstanceUID"),
    MainTag(0x00080016, "sop_class_uid", Kind.TEXT, "SOPClassUID"),
    MainTag(TRANSFER_SYNTAX_UID, "transfer_syntax_uid", Kind.TEXT, "TransferSyntaxUID"),  # each reader its own
    MainTag(0x00200013, "instance_number", Kind.INTEGER, "InstanceNumber"),
    MainTag(0x00080023, "content_date", Kind.DATE, "ContentDate"),
)
READ_TAGS = tuple(t for t in MAIN_TAGS if t.tag != TRANSFER_SYNTAX_UID)  # read from the dataset, by values' rules
UID_TAGS = tuple(t for t in MAIN_TAGS if t.kind is Kind.UID)  # without one of them, the file is no instance
KEY_TAGS = tuple(t for t in MAIN_TAGS if t.kind in (Kind.KEY, Kind.UID))  # in a unique index


@dataclass(frozen=True)
class Instance:
    """The columns of one importable instance, with its patient, study and series (MAIN_TAGS, in its order)."""

    path: str
    size: int
    mtime_ns: int
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_instance_uid: str
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_date: str | None
    series_description: str | None
    body_part_examined: str | None
    sop_instance_uid: str
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    instance_number: int | None
    content_date: str | None
    header: str | None  # DICOM JSON text, or None when full headers are off


def _check_instance() -> None:
    """Instance is written out for the type checker; this keeps it the table's, field for field."""
    found = [(f.name, f.type) for f in dataclasses.fields(Instance)][3:-1]
    wanted = [(t.column, _ANNOTATIONS[t.kind]) for t in MAIN_TAGS]
    if found != wanted:
        raise TypeError(f"sendit_watcher.dicom.tags: Instance's fields {found} are not MAIN_TAGS' {wanted}")


_check_instance()
