"""A lean, single-pass DICOM header reader for explicit and implicit VR little endian (and the encapsulated
syntaxes, whose header is explicit VR little endian), explicit VR big endian and deflated explicit VR little endian
(the dataset after the file meta group inflated whole, as pydicom does), proven identical to the pydicom path of
``headers.read_instance`` by differential tests (tests/test_lean.py). It sits below ``headers``, which calls it
first, and never calls up into it.

Each file is read through a ``stream.Stream``, 64 KiB at a time (most headers are one read), and walked with
``struct.unpack_from``: defined and undefined lengths, sequences and items (each with its own (0008,0005)
SpecificCharacterSet), stopping at (7FE0,0008), (7FE0,0009) or (7FE0,0010) as pydicom's ``stop_before_pixels`` does.
The main tags become columns by the rules of ``values`` (as in headers' path), and the DICOM JSON text is written
directly by the rules of ``values``, ``elements`` and ``dicomjson`` (whose helpers it calls): non-finite numbers as
"NaN"/"Infinity"/"-Infinity", NULs dropped; each element's JSON is remembered by its tag, VR, value bytes and
character set (bounded), and so is a whole sequence of defined length by its bytes, so the values a series repeats
from file to file are written once. Implicit VR takes pydicom's data dictionary (each tag's VR remembered), and
resolves 'US or SS' from (0028,0103); a private element whose VR is not written (implicit VR) or written as UN takes
its VR from its private creator, whatever VR that is written with, by the rule the pydicom path follows too
(``elements.private_vr``). Text in a character set beyond the default, ISO_IR 6, ISO_IR 100 and ISO_IR 192 (code
extensions, GB18030, ...) is decoded by pydicom's charset functions (``elements.decode_text``), as in the pydicom
path.

Memory is bounded per value, not per file: the stream drops what the reader has walked past; a value that will not
be stored is passed over, never read (with the main tags only, every value but theirs and the private creators', and
every sequence of defined length, as pydicom's ``specific_tags`` read does; with the full header, every value whose
JSON is certainly longer than VALUE_LIMIT, ``_Reader.left_out``); a stored value longer than a chunk is read on its
own, once; with the full header, a sequence of defined length up to SEQUENCE_MEMO_BYTES is read whole (its bytes are
the key of its remembered JSON). A deflated dataset is the exception: it is inflated whole (``stream.Memory``), as
pydicom does.

It only ever says "this is an importable instance, with these columns". Anything else returns None, "fall back",
and the caller reads the file with pydicom: a rejection of any kind, no 'DICM' preamble, an unknown transfer
syntax, an unknown or ambiguous VR, a private element the private dictionary makes a sequence when written as UN,
a group length or reserved private element without its VR, elements out of order, a length that does not fit, a
truncated file, any exception. Correctness never depends on this reader being complete.
"""

from __future__ import annotations

import base64
import json
import math
import os
import stat
import struct
import zlib
from array import array
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any, NamedTuple

from pydicom import valuerep

from sendit_watcher.dicom import values
from sendit_watcher.dicom.dicomjson import scalar
from sendit_watcher.dicom.elements import (
    BINARY_VRS,
    CHARSET_AFFECTED,
    SIMPLE_TEXT_VRS,
    STRUCT_FORMATS,
    TAG_PAIRS,
    TEXT_VRS,
    UNPACKERS,
    Codec,
    creator_tag,
    decode_text,
    dictionary_vr,
    known_un,
    private_vr,
    text_codec,
    vr_names,
)
from sendit_watcher.dicom.stream import Memory, Stream
from sendit_watcher.dicom.tags import (
    DICOMDIR_SOP_CLASS,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MEDIA_STORAGE_SOP_CLASS_UID,
    READ_TAGS,
    SPECIFIC_CHARACTER_SET,
    TRANSFER_SYNTAX_UID,
    UID_TAGS,
)
from sendit_watcher.dicom.values import INLINE_BINARY_LIMIT, NON_FINITE, VALUE_LIMIT, clean
from sendit_watcher.walk import open_beneath

__all__ = ["ENABLED", "COUNTS", "TOO_LARGE", "read_fields", "reset_counts"]

ENABLED = True  # the module-level switch: False makes headers.read_instance use the pydicom path for every file
TOO_LARGE = "too_large"  # a field set when the header is longer than values.HEADER_LIMIT (it is None then)
COUNTS = {"lean": 0, "fallback": 0}  # files this process read with the lean reader, and files it handed back

FIRST_READ = 65536  # bytes of each read (stream.Stream's chunk): a longer header is read on a chunk at a time
# A top-level value longer than this is not stored (its element is, with its VR): it is seeked past, never read,
# as pydicom's dcmread(defer_size=...) does in headers' path (values.VALUE_LIMIT).
DEFER_SIZE = VALUE_LIMIT
_PREAMBLE = 128


class _Syntax(NamedTuple):
    """How a transfer syntax encodes the dataset after the file meta group."""
    uid: str
    implicit: bool = False
    little: bool = True
    deflated: bool = False


_DEFLATED = "1.2.840.10008.1.2.1.99"
_ENCAPSULATED = ["1.2.840.10008.1.2.4." + n for n in ("50", "51", "57", "70", "80", "81", "90", "91", "92", "93",
                                                     "100", "101", "102", "103", "104", "105", "106", "107",
                                                     "108", "201", "202", "203")] + ["1.2.840.10008.1.2.5"]
_SYNTAXES = {syntax.uid.encode() + pad: syntax for pad in (b"", b"\x00") for syntax in [
    _Syntax(IMPLICIT_VR_LE, implicit=True), _Syntax(EXPLICIT_VR_LE), _Syntax(EXPLICIT_VR_BE, little=False),
    _Syntax(_DEFLATED, deflated=True), *(_Syntax(uid) for uid in _ENCAPSULATED)]}
_DICOMDIR_SOP_CLASS = DICOMDIR_SOP_CLASS.encode()
_CHARSET = SPECIFIC_CHARACTER_SET
_FIRST_DATASET_TAG = 0x00080000  # top-level elements below group 0008 (command, DICOMDIR) are left to pydicom
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # (7FE0,0008) (7FE0,0009) (7FE0,0010)
_PIXEL_REPRESENTATION = 0x00280103  # (0028,0103)
# 'US or SS' elements read in implicit VR whose VR pydicom takes from (0028,0103) of their dataset:
# (0028,0104) to (0028,0111), (0028,0120) and (0028,0121); the LUT descriptors it treats otherwise are left to it.
_US_OR_SS = frozenset({0x00280104, 0x00280105, 0x00280106, 0x00280107, 0x00280108, 0x00280109, 0x00280110,
                       0x00280111, 0x00280120, 0x00280121})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD  # (FFFE,E000) (FFFE,E00D) (FFFE,E0DD)
_UNDEFINED = 0xFFFFFFFF
_TAG_LENGTH = struct.Struct("<HHL")  # implicit VR element header; item and delimiter headers
_LONG_LENGTH = struct.Struct("<L")
_HEADERS = {True: (_TAG_LENGTH, _LONG_LENGTH), False: (struct.Struct(">HHL"), struct.Struct(">L"))}  # by little
# A big endian value of these VRs is turned little endian (each number's bytes reversed) as soon as it is read:
# the rest of the reader knows little endian only. Numbers of each size, and the typecode of an array of them.
_NUMBER_SIZES = {vr: UNPACKERS[vr, True].size for vr in STRUCT_FORMATS} | {"AT": 2}
_ARRAY_TYPECODES = {array(code).itemsize: code for code in "QLIH"}

_UNPACKERS = {vr: UNPACKERS[vr, True] for vr in STRUCT_FORMATS}  # little endian only
_STANDARD = vr_names(getattr(valuerep, "STANDARD_VR", TEXT_VRS | BINARY_VRS | set(STRUCT_FORMATS) | {"AT", "SQ"}))
_KNOWN_VRS = (TEXT_VRS | BINARY_VRS | set(STRUCT_FORMATS) | {"AT", "SQ"}) & _STANDARD
_VR_BYTES = {vr.encode("ascii"): vr for vr in _KNOWN_VRS}
_LONG_VRS = vr_names(valuerep.EXPLICIT_VR_LENGTH_32)  # explicit VRs with a 4-byte length, as this pydicom reads them
# Written fragments, '"GGGGEEEE":{...}' by (tag, VR, value bytes, codec), shared by every file this process
# reads: the files of a series repeat most of their values, so most elements are one dictionary lookup. Bounded
# in entries and in value size (emptied when full), so files full of distinct values cannot grow it.
_FRAGMENTS: dict[tuple[int, str, bytes, Codec], str] = {}
_FRAGMENTS_LIMIT = 8192
_FRAGMENT_VALUE_LIMIT = 128
# The VRs an implicit VR dataset does not write, remembered the same way (bounded, emptied when full): by its tag,
# where the dictionary alone decides it ('' for a private element: its creator decides, _implicit_header); a
# private element's by its tag and its creator's value (None for a private creator or a reserved element), where
# elements.private_vr decides it. A VR that falls back, a sequence, or one that (0028,0103) decides is never
# remembered: it takes the long way each time.
_IMPLICIT_VRS: dict[int, str] = {}
_PRIVATE_VRS: dict[tuple[int, bytes | None], str] = {}
_VRS_LIMIT = 16384
# Sequences of defined length up to SEQUENCE_MEMO_BYTES, remembered whole the same way: '"GGGGEEEE":{...}' and
# the characters it counted towards HEADER_LIMIT, by tag, VR encoding, byte order, codec and the sequence's bytes
# (its items are datasets of their own: nothing outside those bytes changes their JSON). The files of a series
# often repeat a sequence byte for byte (an enhanced image's functional groups, a procedure code), which is then
# one lookup instead of a walk over its items. Bounded in characters (keys and fragments), emptied when full.
SEQUENCE_MEMO_BYTES = 256 << 10
_SEQUENCES: dict[tuple[int, bool, bool, Codec, bytes], tuple[str, int]] = {}
_SEQUENCES_LIMIT = 8 << 20
_sequences_size = [0]  # characters held by _SEQUENCES

_MAIN_TAGS = frozenset(t.tag for t in READ_TAGS)  # the top-level tags whose text becomes a column
_OTHER_TAGS = tuple(t for t in READ_TAGS if t not in UID_TAGS)
_SPECIAL_TOP = _MAIN_TAGS | {_PIXEL_REPRESENTATION}  # top-level elements whose value is read beyond the JSON
_SPECIAL_ITEM: frozenset[int] = frozenset()
_FIRST_PIXEL_TAG = min(_PIXEL_TAGS)
_NO_TAG = 1 << 32  # above every tag


class _Fallback(Exception):
    """The reader is not sure of this file: pydicom reads it."""


class _HeaderTooLarge(Exception):
    """The header is longer than HEADER_LIMIT as JSON: known before it is read or written whole."""


def reset_counts() -> None:
    COUNTS["lean"] = COUNTS["fallback"] = 0


def read_fields(folder: str, path: str, full_header: bool) -> dict[str, Any] | None:
    """The Instance fields (all but path, size and mtime_ns) of the file at ``path`` below ``folder``, or None
    when pydicom must read it. Never raises."""
    try:
        fields = _read_file(folder, path, full_header)
    except Exception:  # noqa: BLE001 - whatever went wrong, the pydicom path decides
        fields = None
    COUNTS["lean" if fields is not None else "fallback"] += 1
    return fields


def _read_file(folder: str, path: str, full_header: bool) -> dict[str, Any] | None:
    fd = open_beneath(folder, path)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        return parse(fd, info.st_size, full_header)
    finally:
        os.close(fd)


def parse(fd: int, size: int, full_header: bool) -> dict[str, Any] | None:
    """The Instance fields of the regular file of ``size`` bytes open as ``fd``, or None. A header longer than
    HEADER_LIMIT is not written: the fields say TOO_LARGE instead."""
    try:
        return _parse(_Reader(Stream(fd, size, FIRST_READ), full_header))
    except _Fallback:
        return None
    except _HeaderTooLarge:  # read again for the main tags only: the file may be a rejection of an earlier kind
        fields = parse(fd, size, False)
    if fields is not None:
        fields[TOO_LARGE] = True
    return fields


def _parse(reader: _Reader) -> dict[str, Any]:
    if reader.value(_PREAMBLE, 4) != b"DICM":
        raise _Fallback
    meta, start = reader.file_meta(_PREAMBLE + 4)
    syntax = _SYNTAXES.get(meta.get(TRANSFER_SYNTAX_UID, b""))
    if syntax is None or _DICOMDIR_SOP_CLASS in meta.get(MEDIA_STORAGE_SOP_CLASS_UID, b""):
        raise _Fallback
    reader.encoding(syntax)
    if syntax.deflated:
        reader.inflate(start)
    vr = reader.value(start + 4, 2)
    looks_explicit = 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B
    if looks_explicit == reader.implicit:  # pydicom would switch VR encoding: leave it to pydicom
        raise _Fallback
    header, _ = reader.dataset(start, None, "latin-1", True)
    return _fields(reader.main, syntax.uid, header if reader.json else None)


class _Reader:
    """Walks one file's bytes: the file meta group, then the dataset with its sequences. Positions are the file's
    offsets; the bytes are the window of ``stream`` (a chunk, never the whole header), and a value that will not be
    stored is passed over without being read."""

    def __init__(self, stream: Stream, full_header: bool) -> None:
        self.stream = stream
        self.json = full_header
        self.implicit = False
        self.little = True  # the dataset's byte order (the file meta group is little endian)
        self.headers = _HEADERS[True]  # element header and 4-byte length in that order
        self.main: dict[int, str] = {}
        self.pixel_representation: int | None = None  # (0028,0103) of the top-level dataset, when well formed
        self.kept = 0  # characters of the large values' JSON written so far (``counted``)

    def encoding(self, syntax: _Syntax) -> None:
        """Read the dataset in the VR encoding and byte order of ``syntax``."""
        self.implicit, self.little = syntax.implicit, syntax.little
        self.headers = _HEADERS[syntax.little]

    def inflate(self, start: int) -> None:
        """Deflated explicit VR little endian: the rest of the file after ``start`` (the end of the file meta
        group) is one raw deflate stream. It is read once and inflated whole, as pydicom does; the reader goes on
        over the inflated bytes in memory (positions from ``start`` on are theirs). A stream that does not inflate
        (truncated, corrupt) raises zlib.error: pydicom's business."""
        deflated = self.value(start, self.stream.size - start)
        self.stream = Memory(zlib.decompress(deflated, -zlib.MAX_WBITS), start, FIRST_READ)

    def need(self, start: int, stop: int) -> None:
        """Have the stream's window hold the bytes from ``start`` to ``stop``; fall back when the file ends first."""
        if not self.stream.cover(start, stop):
            raise _Fallback

    def value(self, start: int, length: int) -> bytes:
        """The ``length`` bytes at ``start`` (a large value is read on its own, once); fall back when the file
        ends first."""
        stream = self.stream
        at = start - stream.base
        if at >= 0 and at + length <= len(stream.data):
            return stream.data[at:at + length]
        value = stream.value(start, length)
        if value is None:
            raise _Fallback
        return value

    def stored(self, vr: str, pos: int, length: int) -> bytes:
        """The value of ``length`` bytes at ``pos`` (``value``), its numbers little endian whatever the dataset's
        byte order (_little_endian)."""
        value = self.value(pos, length)
        return value if self.little or vr not in _NUMBER_SIZES else _little_endian(vr, value)

    def counted(self, fragment: str) -> str:
        """``fragment``, counted towards the header's size: raise _HeaderTooLarge as soon as the fragments that
        headers._bounded keeps are longer than HEADER_LIMIT, so that a too large header is neither read nor
        written whole. Their characters are at most the final header's UTF-8 bytes, so this never rejects a
        header that fits."""
        if len(fragment) > VALUE_LIMIT // 2 and not _kept(fragment):  # up to half: its value's JSON fits
            return fragment
        self.kept += len(fragment)
        if self.kept > values.HEADER_LIMIT:
            raise _HeaderTooLarge
        return fragment

    def file_meta(self, pos: int) -> tuple[dict[int, bytes], int]:
        """Group 0002 (explicit VR little endian, defined lengths, each element with its dictionary VR): its
        values by tag, and where it ends."""
        meta: dict[int, bytes] = {}
        last = 0
        while True:
            self.need(pos, pos + 8)
            group, element = struct.unpack_from("<HH", self.stream.data, pos - self.stream.base)
            if group != 0x0002:
                return meta, pos
            tag, vr, length, pos = self._explicit_header(pos)
            if tag <= last or vr != dictionary_vr(tag) or vr == "SQ" or length == _UNDEFINED:
                raise _Fallback  # out of order, unknown, or a VR pydicom would convert otherwise
            if vr in _UNPACKERS and length != _UNPACKERS[vr].size:  # pydicom converts (0002,0000) on reading
                raise _Fallback
            last = tag
            meta[tag] = self.value(pos, length)
            pos += length

    def _explicit_header(self, pos: int) -> tuple[int, str, int, int]:
        """(tag, VR, length, value position) of the explicit VR element header at ``pos``."""
        data, at = self.stream.data, pos - self.stream.base
        group, element, length = _TAG_LENGTH.unpack_from(data, at)
        vr = _VR_BYTES.get(data[at + 4:at + 6])
        if vr is None or (vr == "UN" and known_un(group << 16 | element)):  # pydicom converts a known UN
            raise _Fallback
        if vr in _LONG_VRS:
            return group << 16 | element, vr, _LONG_LENGTH.unpack_from(self.value(pos + 8, 4))[0], pos + 12
        return group << 16 | element, vr, length >> 16, pos + 8

    def _implicit_header(self, pos: int, top: bool) -> tuple[int, str, int, int]:
        """(tag, VR, length, value position) of the implicit VR element header at ``pos``; VR '' for a private
        element (its VR comes from its creator, _private_vr)."""
        group, element, length = _TAG_LENGTH.unpack_from(self.stream.data, pos - self.stream.base)
        tag = group << 16 | element
        if top and tag in _PIXEL_TAGS:  # the end of the header: its VR does not matter
            return tag, "", length, pos + 8
        vr = dictionary_vr(tag) if group != 0xFFFE else None
        if vr is None and group & 1:
            _remember(_IMPLICIT_VRS, tag, "")
            return tag, "", length, pos + 8
        if vr in _KNOWN_VRS and vr != "SQ" and tag not in _PIXEL_TAGS:  # the dictionary alone decides it
            _remember(_IMPLICIT_VRS, tag, vr)  # the loop looks it up next time
        elif vr == "US or SS" and top and tag in _US_OR_SS and self.pixel_representation is not None:
            vr = "US" if self.pixel_representation == 0 else "SS"  # as pydicom's correct_ambiguous_vr_element
            if length % 2:
                raise _Fallback
        if vr is None or vr not in _KNOWN_VRS:  # unknown or ambiguous ('US or SS', 'OB or OW')
            raise _Fallback
        return tag, vr, length, pos + 8

    def private_vr(self, tag: int, creators: dict[int, bytes]) -> str:
        """The VR of a private element whose VR is not written (implicit VR) or written as UN, by the rule the
        pydicom path follows (elements.private_vr), from the creators of its dataset so far. Fall back for the
        group length and reserved elements, a VR this reader does not decode, and a sequence written as UN
        (pydicom reads its items in implicit VR)."""
        creator = creators.get(creator_tag(tag)) if tag & 0xFFFF >= 0x1000 else None
        vr = private_vr(tag, creator)
        if vr is None or vr not in _KNOWN_VRS or (vr == "SQ" and not self.implicit):
            raise _Fallback
        if vr != "SQ":  # the loop looks it up next time (_PRIVATE_VRS)
            _remember(_PRIVATE_VRS, (tag, creator), vr)
        return vr

    def dataset(self, pos: int, end: int | None, codec: Codec, top: bool) -> tuple[str, int]:
        """The JSON object of the dataset at ``pos``: up to ``end`` (a defined length), else up to its item
        delimiter (an item) or the end of the file / Pixel Data (the top level); and the position after it.

        The hot loop of the reader: an explicit VR header is decoded here, and a plain element (not a sequence,
        up to the character set, of undefined length, a main tag or (0028,0103)) is written here; the rest goes
        through ``_element``. Names are bound locally: this loop runs once per element of every file."""
        parts: list[str] = []
        append = parts.append
        creators: dict[int, bytes] = {}  # private creator element tag -> its value (elements.private_vr)
        last = -1
        sequences = odd_pixel_representation = False
        implicit, json = self.implicit, self.json
        little = self.little  # big endian: numbers made little endian as they are read (_little_endian)
        short_shift = 16 if little else 0  # where an explicit VR's 2-byte length is in the header's last 4 bytes
        special = _SPECIAL_TOP if top else _SPECIAL_ITEM
        first = _FIRST_DATASET_TAG if top else 0  # top-level elements below it are left to pydicom
        pixel_from = _FIRST_PIXEL_TAG if top else _NO_TAG  # where the top level may end
        unpack, long_length = self.headers[0].unpack_from, self.headers[1].unpack_from
        vr_of, long_vrs = _VR_BYTES.get, _LONG_VRS
        implicit_vr, remembered_private_vr = _IMPLICIT_VRS.get, _PRIVATE_VRS.get
        fragments, fragment_limit = _FRAGMENTS, _FRAGMENT_VALUE_LIMIT
        value_limit, inline_limit = DEFER_SIZE, INLINE_BINARY_LIMIT
        numbers, text_vrs = _NUMBER_SIZES, TEXT_VRS
        stream = self.stream
        data, base = stream.data, stream.base
        size = base + len(data)  # where the window ends, as a file position
        while pos != end:
            if pos + 8 > size:
                if top and pos >= stream.size:
                    break  # the end of the file, and of the dataset
                self.need(pos, pos + 8)
                data, base = stream.data, stream.base
                size = base + len(data)
            at = pos - base  # where the element is in the window
            group, element, length = unpack(data, at)
            if group == 0xFFFE:
                if element == 0xE00D and length == 0 and end is None and not top:
                    return "{" + ",".join(parts) + "}", pos + 8  # the item's delimiter
                raise _Fallback  # an item or delimiter where an element belongs
            if implicit:
                tag = group << 16 | element
                vr = implicit_vr(tag)  # type: ignore[assignment]
                if vr is None:
                    tag, vr, length, pos = self._implicit_header(pos, top)
                else:
                    pos += 8
            else:
                tag = group << 16 | element
                vr = vr_of(data[at + 4:at + 6])  # type: ignore[assignment]
                if vr is None or (vr == "UN" and known_un(tag)):
                    raise _Fallback  # pydicom converts a UN its dictionary knows
                if vr in long_vrs:
                    if pos + 12 > size:
                        self.need(pos, pos + 12)
                        data, base = stream.data, stream.base
                        size = base + len(data)
                        at = pos - base
                    length = long_length(data, at + 8)[0]
                    pos += 12
                else:
                    length = length >> short_shift & 0xFFFF
                    pos += 8
            if tag >= pixel_from and tag in _PIXEL_TAGS:
                break
            if tag <= last or tag < first:
                raise _Fallback
            last = tag
            if not vr or (vr == "UN" and group & 1):  # a private element without its VR, or written as UN
                vr = remembered_private_vr((tag, creators.get(group << 16 | element >> 8) if element >= 0x1000
                                            else None)) or self.private_vr(tag, creators)
            if vr == "SQ" or tag <= _CHARSET or length == _UNDEFINED or tag in special or tag == _PIXEL_REPRESENTATION:
                if vr == "SQ":
                    sequences = True
                if tag == _PIXEL_REPRESENTATION:
                    odd_pixel_representation = vr != "US" or length != 2
                if sequences and odd_pixel_representation:  # pydicom converts (0028,0103) reading a sequence
                    raise _Fallback
                entry, pos, codec = self._element(tag, vr, length, pos, codec, top)
                data, base = stream.data, stream.base
                size = base + len(data)
                if json:
                    append(entry)
            elif top and length > value_limit and not (group & 1 and element <= 0xFF):
                # not stored: passed over, never read, and the end of the file if it runs past it (pydicom's
                # defer_size)
                if json and implicit and tag in _US_OR_SS:
                    raise _Fallback  # pydicom resolves its VR from (0028,0103): leave it to pydicom
                pos += length
                if json:
                    append(_key(tag) + f'{{"vr":"{vr}"}}')
                continue
            else:
                stop = pos + length
                if json and length <= fragment_limit and stop <= size:  # the common case: small, in the window
                    value = data[pos - base:stop - base]  # _fragment's lookup, inlined: mostly one dictionary hit
                    if not little and vr in numbers:
                        value = _little_endian(vr, value)
                    append(fragments.get((tag, vr, value, codec)) or _fragment(tag, vr, value, codec))
                elif json and (length <= inline_limit or not self.left_out(vr, pos, length, codec)) or (
                        group & 1 and 0x10 <= element <= 0xFF and vr in text_vrs):  # stored, or a private creator
                    value = self.stored(vr, pos, length)
                    data, base = stream.data, stream.base
                    size = base + len(data)
                    if json:
                        append(_fragment(tag, vr, value, codec) if length <= fragment_limit
                               else self.counted(_fragment(tag, vr, value, codec)))
                elif stop > stream.size and (json or not top):
                    raise _Fallback  # runs past the end of the file: pydicom's path says what that is
                elif json:  # not stored (its JSON is certainly too long): passed over, never read
                    append(_key(tag) + f'{{"vr":"{vr}"}}')
                pos = stop
                if group & 1 and 0x10 <= element <= 0xFF and vr in text_vrs:  # a private creator names its block
                    creators[tag] = value  # read above, whatever the mode
            if end is not None and pos > end:
                raise _Fallback
        return "{" + ",".join(parts) + "}", pos

    def left_out(self, vr: str, pos: int, length: int, codec: Codec) -> bool:
        """True when the value of ``length`` bytes at ``pos`` is certainly left out of the stored header (as
        headers._bounded and dicomjson have it), so that it need not be read: binary data longer than
        INLINE_BINARY_LIMIT; numbers too many for their JSON (at least two characters each) to fit VALUE_LIMIT;
        text with more significant characters (neither padding nor NUL, each at least one in the JSON) than
        VALUE_LIMIT, counted chunk by chunk (nothing is kept) in the character sets decoded here."""
        if vr in BINARY_VRS:
            return length > INLINE_BINARY_LIMIT
        unpacker = _UNPACKERS.get(vr)
        if unpacker is not None or vr == "AT":
            return 2 * (length // (unpacker.size if unpacker else 4)) - 1 > VALUE_LIMIT
        significant = _SIGNIFICANT.get(codec) if vr in SIMPLE_TEXT_VRS and length > VALUE_LIMIT else None
        if significant is None:
            return False
        exceeds = self.stream.exceeds(pos, length, significant, VALUE_LIMIT)
        if exceeds is None:
            raise _Fallback  # the file ends inside the value
        return exceeds

    def _element(self, tag: int, vr: str, length: int, pos: int, codec: Codec, top: bool) -> tuple[str, int, Codec]:
        """The JSON of one element ('"GGGGEEEE":{...}') whose value is at ``pos``, the position after it, and
        the dataset's codec from here on (changed by (0008,0005))."""
        if tag < _CHARSET and (vr == "SQ" or vr in CHARSET_AFFECTED):
            raise _Fallback  # decoded before the dataset's character set is known: pydicom's business
        if vr == "SQ" and self.json and length <= SEQUENCE_MEMO_BYTES:  # defined and short: maybe remembered
            entry, pos = self._remembered_sequence(tag, pos, length, codec)
            return entry, pos, codec
        if vr == "SQ" and (self.json or length == _UNDEFINED):
            entry, pos = self._sequence(pos, length, codec)
            return _key(tag) + entry, pos, codec
        if length == _UNDEFINED or pos + length > self.stream.size:
            raise _Fallback  # undefined length (not a sequence), or past the end of the file: pydicom's business
        if not (self.json or tag == _CHARSET or top and (tag in _MAIN_TAGS or tag == _PIXEL_REPRESENTATION)):
            return "", pos + length, codec  # main tags only: not needed (a sequence too), passed over as pydicom does
        if top and length > DEFER_SIZE and tag != _CHARSET:
            raise _Fallback  # a main tag too long to be read: pydicom's path says what it is
        value = self.stored(vr, pos, length)
        if tag == _CHARSET:
            if b"\\ " in value or value[:1] == b" " or not value.isascii():  # pydicom keeps a leading space
                raise _Fallback  # in this element, and decodes it as Latin-1 whatever it names
            codec = _charset_codec(vr, value)
        if top and tag in _MAIN_TAGS:
            self.main[tag] = _main_text(vr, value, codec)
        elif top and tag == _PIXEL_REPRESENTATION and vr == "US" and length == 2:
            self.pixel_representation = value[0] | value[1] << 8
        return (_fragment(tag, vr, value, codec) if self.json else ""), pos + length, codec

    def _remembered_sequence(self, tag: int, pos: int, length: int, codec: Codec) -> tuple[str, int]:
        """'"GGGGEEEE":{...}' of the sequence of defined ``length`` at ``pos`` and the position after it, from
        _SEQUENCES when the same bytes were read before in the same encoding (its count towards HEADER_LIMIT
        counted again), else walked (``_sequence``) and remembered. Its bytes come into the window whole."""
        self.need(pos, pos + length)
        stream = self.stream
        memo = (tag, self.implicit, self.little, codec, stream.data[pos - stream.base:pos + length - stream.base])
        found = _SEQUENCES.get(memo)
        if found is not None:
            self.kept += found[1]
            if self.kept > values.HEADER_LIMIT:
                raise _HeaderTooLarge
            return found[0], pos + length
        kept = self.kept
        entry, end = self._sequence(pos, length, codec)
        fragment = _key(tag) + entry
        size = length + len(fragment)
        if size <= _SEQUENCES_LIMIT // 4:
            if _sequences_size[0] + size > _SEQUENCES_LIMIT:
                _SEQUENCES.clear()
                _sequences_size[0] = 0
            _SEQUENCES[memo] = fragment, self.kept - kept
            _sequences_size[0] += size
        return fragment, end

    def _sequence(self, pos: int, length: int, codec: Codec) -> tuple[str, int]:
        items: list[str] = []
        end = None if length == _UNDEFINED else pos + length
        if end is not None and end > self.stream.size:
            raise _Fallback
        stream = self.stream
        while pos != end:
            if pos + 8 > stream.base + len(stream.data):
                self.need(pos, pos + 8)
            group, element, item_length = self.headers[0].unpack_from(stream.data, pos - stream.base)
            tag = group << 16 | element
            if end is None and tag == _SEQUENCE_END and item_length == 0:
                return _sequence_entry(items), pos + 8
            if tag != _ITEM:
                raise _Fallback
            item_end = None if item_length == _UNDEFINED else pos + 8 + item_length
            item, pos = self.dataset(pos + 8, item_end, codec, False)
            if end is not None and pos > end:
                raise _Fallback
            items.append(item)
        return _sequence_entry(items), pos


def _significant_characters(deleted: bytes) -> Callable[[bytes], int]:
    """Counts the characters of text bytes that are neither padding (space, NUL) nor, in UTF-8, a continuation
    byte: at most as many characters as the text decodes to, each one at least one character of its JSON."""
    return lambda chunk: len(chunk.translate(None, deleted))


_SIGNIFICANT: dict[Codec, Callable[[bytes], int]] = {"latin-1": _significant_characters(b" \x00"),
                "utf-8": _significant_characters(b" \x00" + bytes(range(0x80, 0xC0)))}


def _kept(fragment: str) -> bool:
    """Whether headers._bounded keeps this element's value (its rule, on this element alone)."""
    value = json.loads("{" + fragment + "}").popitem()[1].get("Value")
    return value is None or values.kept_in_header(value)


def _little_endian(vr: str, value: bytes) -> bytes:
    """A big endian value of numbers (_NUMBER_SIZES) with each number's bytes reversed; a trailing part too short
    for a number is dropped (as the readers drop it)."""
    size = _NUMBER_SIZES[vr]
    numbers = array(_ARRAY_TYPECODES[size], value[:len(value) - len(value) % size])
    numbers.byteswap()
    return numbers.tobytes()


def _sequence_entry(items: list[str]) -> str:
    return '{"vr":"SQ","Value":[' + ",".join(items) + "]}" if items else '{"vr":"SQ"}'


def _charset_codec(vr: str, value: bytes) -> Codec:
    """The codec of a (0008,0005) SpecificCharacterSet whose every term pydicom knows (elements.text_codec),
    else fall back."""
    codec = text_codec(value, known=True) if vr == "CS" else None
    if codec is None:
        raise _Fallback
    return codec


def _main_text(vr: str, value: bytes, codec: Codec) -> str:
    """A main tag's values joined by backslash, as ``elements.Decoder.text`` gives them; fall back when it is
    not text (pydicom converts it)."""
    if vr not in TEXT_VRS:
        raise _Fallback
    return "\\".join(v for v in decode_text(vr, value, codec) if v is not None)


def _remember(memo: dict[Any, str], key: Any, vr: str) -> None:
    """Remember ``vr`` for ``key`` in one of the VR memos, emptied when full."""
    if len(memo) >= _VRS_LIMIT:
        memo.clear()
    memo[key] = vr


def _key(tag: int) -> str:
    return f'"{tag:08X}":'


def _fragment(tag: int, vr: str, value: bytes, codec: Codec) -> str:
    """'"GGGGEEEE":' and the element's DICOM JSON object, from _FRAGMENTS when written before."""
    if len(value) > _FRAGMENT_VALUE_LIMIT:
        return _key(tag) + _entry(vr, value, codec)
    memo = (tag, vr, value, codec)
    fragment = _FRAGMENTS.get(memo)
    if fragment is None:
        fragment = _key(tag) + _entry(vr, value, codec)
        if len(_FRAGMENTS) >= _FRAGMENTS_LIMIT:
            _FRAGMENTS.clear()
        _FRAGMENTS[memo] = fragment
    return fragment


def _entry(vr: str, value: bytes, codec: Codec) -> str:
    """One element's DICOM JSON object (dicomjson.dataset_to_json + headers._header_json)."""
    if vr in SIMPLE_TEXT_VRS:
        return _text_entry(vr, value, codec)
    if vr in BINARY_VRS:
        if value and len(value) <= INLINE_BINARY_LIMIT:
            return f'{{"vr":"{vr}","InlineBinary":"{base64.b64encode(value).decode("ascii")}"}}'
        return f'{{"vr":"{vr}"}}'
    if vr in TEXT_VRS:  # PN, IS, DS
        items = [_json(scalar(vr, v)) for v in decode_text(vr, value, codec)]
    elif vr == "AT":
        items = [f'"{g:04X}{e:04X}"' for g, e in TAG_PAIRS[True].iter_unpack(value[:len(value) - len(value) % 4])]
    else:
        unpacker = _UNPACKERS[vr]
        usable = value[:len(value) - len(value) % unpacker.size]
        items = [_json(v[0]) for v in unpacker.iter_unpack(usable)]
    if not items:
        return f'{{"vr":"{vr}"}}'
    return f'{{"vr":"{vr}","Value":[{",".join(items)}]}}'


def _text_entry(vr: str, value: bytes, codec: Codec) -> str:
    """dicomjson._simple_text, written as JSON (elements.decode_text)."""
    pieces = decode_text(vr, value, codec) if value else []
    if not pieces:
        return f'{{"vr":"{vr}"}}'
    return f'{{"vr":"{vr}","Value":[{",".join(_string(p) if p else "null" for p in pieces)}]}}'


def _string(text: str) -> str:
    return str(encode_basestring(clean(text)))


def _json(value: Any) -> str:
    """A JSON value as jsonb takes it: non-finite numbers as "NaN"/"Infinity"/"-Infinity", no NULs."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, float):
        return float.__repr__(value) if math.isfinite(value) else f'"{NON_FINITE[repr(value)]}"'
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, dict):  # a person name's component groups
        return "{" + ",".join(f"{_string(k)}:{_json(v)}" for k, v in value.items()) + "}"
    raise _Fallback


def _fields(main: dict[int, str], transfer_syntax_uid: str, header: str | None) -> dict[str, Any]:
    """The Instance fields (values.columns, as headers' path), or fall back when the file is a rejection
    (pydicom gives the reason)."""
    fields = values.columns(main.get, UID_TAGS)
    if not all(fields.values()):
        raise _Fallback
    fields.update(values.columns(main.get, _OTHER_TAGS))
    fields["transfer_syntax_uid"] = transfer_syntax_uid
    fields["header"] = header
    return fields
