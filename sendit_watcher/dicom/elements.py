"""Decoding data elements straight from the bytes pydicom read (its RawDataElement), without building
DataElement objects: the fast path for the main columns and the JSON header. Anything unusual (sequences,
ambiguous VRs, elements pydicom already converted) falls back to pydicom.

Also the rules both readers share for what pydicom would otherwise decide element by element: the VR of a private
element whose VR is not written (implicit VR) or written as UN, from its private creator (``private_vr``), and the
decoding of text in any character set (``text_codec``, ``decode_text``)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from pydicom import valuerep
from pydicom.charset import convert_encodings, decode_bytes, python_encoding
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import RawDataElement

from sendit_watcher.dicom.tags import SPECIFIC_CHARACTER_SET
from sendit_watcher.dicom.values import SINGLE_VALUED, charset_codec, split_values

__all__ = ["Codec", "Decoder", "FALLBACK", "deferred", "known_un", "private_data", "private_vr", "creator_tag",
           "creator_name", "text_codec", "decode_text", "dictionary_vr", "vr_names", "TEXT_VRS", "SIMPLE_TEXT_VRS",
           "BINARY_VRS", "INT_VRS", "FLOAT_VRS", "CHARSET_AFFECTED", "STRUCT_FORMATS", "UNPACKERS", "TAG_PAIRS"]

# How a dataset's text is decoded: a Python codec (the character sets values.CODECS lists), or the Python
# encodings pydicom names for its SpecificCharacterSet (code extensions, GB18030, ...), decoded by pydicom's
# charset functions.
Codec = str | tuple[str, ...]

FALLBACK = object()  # "ask pydicom": this element is not for the fast path


def vr_names(vrs: Iterable[Any]) -> frozenset[str]:
    """pydicom's VR set (of its VR enum, pydicom >= 2.3) as plain strings."""
    return frozenset(str(getattr(vr, "value", vr)) for vr in vrs)


# The VR classes, from pydicom's own tables wherever it has one; every module takes them from here.
TEXT_VRS = vr_names(valuerep.STR_VR)  # text, including IS and DS
SIMPLE_TEXT_VRS = TEXT_VRS - {"PN", "IS", "DS"}  # text whose DICOM JSON value is the text itself
BINARY_VRS = vr_names(valuerep.BYTES_VR)  # OB OD OF OL OV OW UN
INT_VRS = vr_names(valuerep.INT_VR) - {"AT"}  # IS and the binary integers
FLOAT_VRS = vr_names(valuerep.FLOAT_VR)  # DS FL FD
CHARSET_AFFECTED = vr_names(valuerep.CUSTOMIZABLE_CHARSET_VR)  # text decoded with SpecificCharacterSet
# The binary numbers: each VR's struct format, and its unpackers by (VR, little endian); an AT value's tags.
STRUCT_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
UNPACKERS = {(vr, little): struct.Struct(("<" if little else ">") + code)
             for vr, code in STRUCT_FORMATS.items() for little in (True, False)}
TAG_PAIRS = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}


class Decoder:
    """Decodes one dataset's raw elements; ``codec`` None means its character set needs pydicom."""

    def __init__(self, dataset: Any, codec: Codec | None = "") -> None:
        self.dataset = dataset
        self.codec = _codec(dataset) if codec == "" else codec
        self._by_tag: dict[int, tuple[str, RawDataElement | None]] | None = None

    def raw_elements(self) -> Iterator[tuple[int, str, RawDataElement | None]]:
        """(tag, VR, raw element) for every element; raw is None where pydicom must convert it."""
        elements = getattr(self.dataset, "_dict", None)  # pydicom 2 and 3 keep elements here, by tag
        if not isinstance(elements, dict):
            for tag in self.dataset.keys():
                found = self.vr_and_raw(int(tag))
                yield (int(tag), found[0], found[1]) if found else (int(tag), "", None)
            return
        for key, raw in elements.items():
            tag = int(key)  # pydicom's BaseTag compares in Python; a plain int keeps lookups in C
            if type(raw) is not RawDataElement:
                yield tag, "", None
                continue
            vr = self._vr_of(tag, raw)
            yield (tag, vr, raw) if vr else (tag, "", None)

    def vr_and_raw(self, tag: int) -> tuple[str, RawDataElement] | None:
        """The element's VR and raw form when the fast path can decode it, else None."""
        raw = self.dataset.get_item(tag)
        if not isinstance(raw, RawDataElement):
            return None
        vr = self._vr_of(tag, raw)
        return (vr, raw) if vr else None

    def _vr_of(self, tag: int, raw: RawDataElement) -> str | None:
        """The VR the fast path decodes ``raw`` with, None when it is pydicom's business."""
        vr = raw.VR or dictionary_vr(tag)
        if tag >> 16 & 1 and (vr is None or vr == "UN"):  # a private element: its creator says
            vr = private_vr(tag, self._creator(tag))
        if deferred(raw):  # longer than the read's defer_size: its element without its value, never read
            return (vr or "UN").split(" ", 1)[0]
        if vr is None or vr == "SQ" or " " in vr or (self.codec is None and vr in CHARSET_AFFECTED) \
                or (vr == "UN" and known_un(tag)):
            return None
        return vr

    def _creator(self, tag: int) -> bytes | None:
        """The value of the private creator of a private data element's block, as written (creator_value)."""
        if tag & 0xFFFF < 0x1000:
            return None
        elements = getattr(self.dataset, "_dict", None)
        element = elements.get(creator_tag(tag)) if isinstance(elements, dict) else \
            self.dataset.get_item(creator_tag(tag))
        return None if element is None else creator_value(element)

    def values(self, vr: str, raw: RawDataElement) -> list[Any]:
        """Python values of a raw element: str for text, int/float for numbers, one bytes for binary."""
        data = raw.value or b""
        if vr in TEXT_VRS:
            return decode_text(vr, data, self.codec or "latin-1")
        if vr in STRUCT_FORMATS:
            unpacker = UNPACKERS[vr, raw.is_little_endian]
            size = unpacker.size
            if len(data) == size:
                return list(unpacker.unpack(data))
            return [v[0] for v in unpacker.iter_unpack(data[: len(data) - len(data) % size])]
        if vr == "AT":
            pairs = TAG_PAIRS[raw.is_little_endian]
            return [f"{g:04X}{e:04X}" for g, e in pairs.iter_unpack(data[: len(data) - len(data) % 4])]
        return [data]

    def text(self, tag: int) -> str | None | object:
        """A text element as DICOM writes it (values joined by backslash), None if absent, FALLBACK if unsure."""
        if self._by_tag is None:  # one pass over the dataset; later look-ups are plain int dict gets
            self._by_tag = {t: (vr, raw) for t, vr, raw in self.raw_elements()}
        found = self._by_tag.get(tag)
        if found is None:
            return None
        vr, raw = found
        if raw is not None and deferred(raw):
            return None  # too long to have been read (headers rejects such a key)
        if raw is None or vr not in TEXT_VRS:
            return FALLBACK
        return "\\".join(v for v in self.values(vr, raw) if v is not None)


def deferred(raw: RawDataElement) -> bool:
    """True for an element whose value pydicom did not read (longer than dcmread's defer_size): reading it
    would open the file again, so its value is never asked for."""
    return raw.value is None and raw.length != 0


def known_un(tag: int) -> bool:
    """True for a public tag whose dictionary VR is not UN: pydicom converts such an element read as UN to its
    dictionary VR (a sequence, text, numbers), so it is left to pydicom."""
    vr = dictionary_vr(tag) if not (tag >> 16) & 1 else None
    return vr is not None and vr != "UN"


def private_data(tag: int) -> bool:
    """A private data element (odd group, element 0x1000 and above), whose VR its private creator may define."""
    return bool(tag >> 16 & 1) and tag & 0xFFFF >= 0x1000


def creator_tag(tag: int) -> int:
    """The tag of the private creator that reserves the block of the private data element ``tag``."""
    return tag >> 16 << 16 | (tag & 0xFFFF) >> 8


def creator_value(element: Any) -> bytes | None:
    """A private creator element's value as written, when its VR is one a creator's name can have (not written,
    UN, or text: LO as the standard has it, SH or UN as PACS forward it); a value pydicom already converted is
    written back (several values joined by backslash). None for any other element."""
    vr = element.VR
    vr = str(getattr(vr, "value", vr)) if vr else None
    if vr is not None and vr != "UN" and vr not in TEXT_VRS:
        return None
    value = element.value
    if isinstance(value, bytes) or value is None:
        return value or b""
    text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) or \
        type(value).__name__ == "MultiValue" else str(value)
    return text.encode("latin-1", "replace")


def creator_name(value: bytes | None) -> str | None:
    """The name a private creator's value gives its block, by one rule for every VR it is written with: the
    value without its padding (trailing spaces and NULs), as text; None when it names no block (empty, several
    values, not printable ASCII), so its elements are UN. pydicom 2.3 fails on a creator of several values
    (TypeError: unhashable 'MultiValue'); pydicom 3 finds no entry: the elements are UN here in both."""
    if not value:
        return None
    try:
        name = value.rstrip(b" \x00").decode("ascii")
    except UnicodeDecodeError:
        return None
    return name if name and name.isprintable() and "\\" not in name else None


def private_vr(tag: int, creator: bytes | None) -> str | None:
    """The VR of an element of an odd group whose VR is not written (implicit VR) or written as UN, as pydicom
    reads it (its _private_vr_for_tag): LO for a private creator; for a private data element, the VR the private
    dictionary gives it under its creator's name (``creator`` is the creator's value, creator_name), else UN.
    None for the group length and reserved elements (element below 0x0010, or 0x0100 to 0x0FFF): pydicom's
    business."""
    element = tag & 0xFFFF
    if 0x0010 <= element <= 0x00FF:
        return "LO"
    if element < 0x1000:
        return None
    name = creator_name(creator)
    return "UN" if name is None else _private_dictionary_vr(tag, name)


@lru_cache(maxsize=16384)  # bounded: creators and tags come from the files
def _private_dictionary_vr(tag: int, name: str) -> str:
    try:
        vr = private_dictionary_VR(tag, name)
    except KeyError:
        return "UN"
    return str(getattr(vr, "value", vr))


# Where a character set's code extension ends (PS3.5 6.1.2.5.3): the text delimiters, the value delimiter
# (backslash) of the VRs with several values, and a person name's group and component delimiters.
_DELIMITERS = {True: set(valuerep.TEXT_VR_DELIMS), False: set(valuerep.TEXT_VR_DELIMS) | {0x5C}}
_PN_DELIMITERS = _DELIMITERS[False] | {0x3D, 0x5E}


def text_codec(value: bytes, known: bool = False) -> Codec | None:
    """The codec of a SpecificCharacterSet (0008,0005) value: a Python codec for the character sets
    values.CODECS lists, else the Python encodings pydicom's convert_encodings names (an unknown one its
    default); None when pydicom refuses (its reading validation mode RAISE), or, when ``known``, unless pydicom
    knows every term by its DICOM name (a misspelt or unknown one is pydicom's business: 2.3 may fail on it)."""
    codec = charset_codec(value)
    if codec is not None:
        return codec
    names = [v or "" for v in split_values("CS", value.decode("ascii", "replace"))]
    if known and not all(name in python_encoding for name in names):
        return None
    try:
        return tuple(convert_encodings(names))
    except Exception:  # noqa: BLE001 - pydicom raises for an unknown character set when asked to
        return None


def decode_text(vr: str, value: bytes, codec: Codec) -> list[str | None]:
    """The values of a text element (values.split_values) decoded with ``codec``: by Python's codec, or by
    pydicom's decode_bytes (code extensions reset at each delimiter; undecodable bytes replaced)."""
    if isinstance(codec, str):
        return split_values(vr, value.decode(codec, "replace"))
    delimiters = _PN_DELIMITERS if vr == "PN" else _DELIMITERS[vr in SINGLE_VALUED]
    return split_values(vr, decode_bytes(value, list(codec), delimiters))


def _codec(dataset: Any) -> Codec | None:
    raw = dataset.get_item(SPECIFIC_CHARACTER_SET)
    if raw is None or isinstance(raw, RawDataElement):
        value = b"" if raw is None else raw.value or b""
    else:  # converted by pydicom: its values, joined again
        value = "\\".join(raw.value).encode("ascii", "replace") if isinstance(raw.value, (list, tuple)) or \
            type(raw.value).__name__ == "MultiValue" else str(raw.value).encode("ascii", "replace")
    return text_codec(value)


@lru_cache(maxsize=16384)  # bounded: hostile files can carry any number of distinct private tags
def dictionary_vr(tag: int) -> str | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return str(getattr(vr, "value", vr))

