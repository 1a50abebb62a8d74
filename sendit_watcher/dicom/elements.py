"""Decoding data elements straight from the bytes pydicom read (its RawDataElement), without building
DataElement objects: the fast path for the main columns and the JSON header. Anything unusual (sequences,
ambiguous VRs, multi-byte character sets, elements pydicom already converted) falls back to pydicom."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from pydicom import valuerep
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement

from sendit_watcher.dicom.tags import SPECIFIC_CHARACTER_SET
from sendit_watcher.dicom.values import charset_codec, split_values

__all__ = ["Decoder", "FALLBACK", "deferred", "known_un", "private_data", "dictionary_vr", "vr_names", "TEXT_VRS",
           "SIMPLE_TEXT_VRS", "BINARY_VRS", "INT_VRS", "FLOAT_VRS", "CHARSET_AFFECTED", "STRUCT_FORMATS",
           "UNPACKERS", "TAG_PAIRS"]

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

    def __init__(self, dataset: Any, codec: str | None = "") -> None:
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
        text_ok = self.codec is not None
        for key, raw in elements.items():
            tag = int(key)  # pydicom's BaseTag compares in Python; a plain int keeps lookups in C
            if type(raw) is not RawDataElement:
                yield tag, "", None
                continue
            vr = raw.VR or dictionary_vr(tag)
            if deferred(raw):  # longer than the read's defer_size: its element without its value, never read
                yield tag, (vr or "UN").split(" ", 1)[0], raw
                continue
            if vr is None or vr == "SQ" or " " in vr or (not text_ok and vr in CHARSET_AFFECTED) \
                    or _known_un(vr, tag):
                yield tag, "", None
            else:
                yield tag, vr, raw

    def vr_and_raw(self, tag: int) -> tuple[str, RawDataElement] | None:
        """The element's VR and raw form when the fast path can decode it, else None."""
        raw = self.dataset.get_item(tag)
        if not isinstance(raw, RawDataElement):
            return None
        vr = raw.VR or dictionary_vr(tag)
        if deferred(raw):
            return (vr or "UN").split(" ", 1)[0], raw
        if vr is None or " " in vr or vr == "SQ" or (vr in CHARSET_AFFECTED and self.codec is None) or \
                _known_un(vr, tag):
            return None
        return vr, raw

    def values(self, vr: str, raw: RawDataElement) -> list[Any]:
        """Python values of a raw element: str for text, int/float for numbers, one bytes for binary."""
        data = raw.value or b""
        if vr in TEXT_VRS:
            return split_values(vr, data.decode(self.codec or "latin-1", "replace"))
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


def _known_un(vr: str, tag: int) -> bool:
    """An element read as UN that pydicom may convert: a public one its dictionary knows, or a private one
    (pydicom looks it up under its creator in the private dictionary)."""
    return vr == "UN" and (known_un(tag) or private_data(tag))


def private_data(tag: int) -> bool:
    """A private data element (odd group, element 0x1000 and above), whose VR its private creator may define."""
    return bool(tag >> 16 & 1) and tag & 0xFFFF >= 0x1000


def _codec(dataset: Any) -> str | None:
    raw = dataset.get_item(SPECIFIC_CHARACTER_SET)
    value = b"" if raw is None else raw.value if isinstance(raw, RawDataElement) else str(raw.value).encode(
        "ascii", "replace")
    return charset_codec(value or b"")


@lru_cache(maxsize=16384)  # bounded: hostile files can carry any number of distinct private tags
def dictionary_vr(tag: int) -> str | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return str(getattr(vr, "value", vr))

