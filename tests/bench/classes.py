"""A corpus class matrix for the header readers: the kinds of files a hospital sends, generated (nothing is
downloaded). Each class is one template dataset written once by pydicom (3.x or Debian 12's 2.3.1), then cloned per
file with a fresh SOP Instance UID and InstanceNumber (fixed-width placeholders patched in the bytes; a deflated
file is inflated, patched and deflated again). Used by tests/bench/bench_classes.py and tests/test_classes.py.

The CT classes start from pydicom's bundled CT_small.dcm (a GE CT: 179 private elements under nine GEMS_*
creators that pydicom's private dictionary knows); the others are built here.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
DEFLATED, BIG_ENDIAN = "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
CT_IMAGE, MR_IMAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR, ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.104.1"

_SOP = "9" * 60  # the SOP Instance UID placeholder (file meta and dataset), patched per file
_NUMBER = "555555555"  # the InstanceNumber placeholder (IS), patched per file
_ROOT = "1.2.826.0.1.3680043.10.7"  # the UIDs made here


@dataclass(frozen=True)
class FileClass:
    name: str
    summary: str
    syntax: str
    dataset: Callable[[], Dataset]  # the template's dataset (its file meta is set when written)
    full_files: int = 200  # files at full size (fewer for the large ones: the corpus stays under 1 GB a class)


def _uid(*parts: int) -> str:
    return ".".join([_ROOT, *(str(p) for p in parts)])


def _file_uid(kind: int, number: int) -> bytes:
    """A UID of exactly 60 characters, as long as the placeholder it replaces."""
    uid = f"{_ROOT}.{kind}.1{number:0{60 - len(_ROOT) - 3 - len(str(kind))}d}"
    assert len(uid) == 60, uid
    return uid.encode()


def _converted(ds: Dataset) -> Dataset:
    """``ds`` with every raw element converted (so that it can be written in another encoding)."""
    for _ in ds.iterall():
        pass
    return ds


def _ct_small() -> Dataset:
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))


def _ct() -> Dataset:
    """CT_small with this corpus' UIDs and placeholders (its GE private elements kept)."""
    ds = _converted(_ct_small())
    _identify(ds, CT_IMAGE, 1)
    return ds


def _identify(ds: Dataset, sop_class: str, series: int) -> None:
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, _SOP
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(1, series), _uid(2, series)
    ds.InstanceNumber = _NUMBER


def raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """An element pydicom writes byte for byte (little endian values)."""
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _ct_private_as(creator_vr: str) -> Callable[[], Dataset]:
    """The GE CT as a PACS forwards it: private creators written as ``creator_vr``, private data elements as UN."""
    def build() -> Dataset:
        ds = _ct_small()  # raw elements: their values are the file's little endian bytes
        for tag, element in list(ds._dict.items()):
            if tag.is_private and isinstance(element, RawDataElement) and element.VR != "SQ":
                ds._dict[tag] = element._replace(VR=creator_vr if tag.is_private_creator else "UN")
        _identify(ds, CT_IMAGE, 12 if creator_vr == "UN" else 13)
        return ds
    return build


def _creator_un_multivalued() -> Dataset:
    """The GE CT with one more private block whose creator, written as UN, reads 'A\\B' (two values as LO)."""
    ds = _ct()
    _identify(ds, CT_IMAGE, 14)
    raw(ds, 0x00510010, "UN", b"A\\B ")
    raw(ds, 0x00511001, "UN", b"VALUE ")
    return ds


def _enhanced_mr(frames: int = 200) -> Dataset:
    """An enhanced MR image: ``frames`` 32x32 frames, shared and per-frame functional groups (six macros each)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime, ds.ContentTime = "101010", "101500.250"
    ds.AccessionNumber, ds.Modality, ds.Manufacturer = "A1000", "MR", "BENCH"
    ds.StudyDescription, ds.SeriesDescription = "MR BRAIN", "t2_tse_tra"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Enhanced", "P-MR", "19700101", "O"
    ds.SeriesNumber = 3
    ds.NumberOfFrames = frames
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([_item(PixelSpacing=["0.5", "0.5"], SliceThickness="3")])
    shared.MRImageFrameTypeSequence = Sequence([_item(FrameType=["ORIGINAL", "PRIMARY", "M", "NONE"],
                                                      PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
                                                      VolumeBasedCalculationTechnique="NONE",
                                                      ComplexImageComponent="MAGNITUDE",
                                                      AcquisitionContrast="T2")])
    shared.MRTimingAndRelatedParametersSequence = Sequence([_item(RepetitionTime=4000.0, FlipAngle=150.0,
                                                                  EchoTrainLength=15)])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for n in range(frames):
        frame = Dataset()
        frame.FrameContentSequence = Sequence([_item(
            FrameAcquisitionDateTime=f"20260101101010.{n:06d}", FrameReferenceDateTime=f"20260101101010.{n:06d}",
            FrameAcquisitionDuration=120.5, StackID="1", InStackPositionNumber=n + 1,
            DimensionIndexValues=[1, n + 1])])
        frame.PlanePositionSequence = Sequence([_item(ImagePositionPatient=["-120", "-118.5", f"{-40 + 3 * n}"])])
        frame.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])])
        frame.PixelValueTransformationSequence = Sequence([_item(RescaleIntercept="0", RescaleSlope="1",
                                                                 RescaleType="US")])
        frame.FrameVOILUTSequence = Sequence([_item(WindowCenter="600", WindowWidth="1200")])
        frame.MREchoSequence = Sequence([_item(EffectiveEchoTime=98.0 + n % 3)])
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = bytes(32 * 32 * 2 * frames)
    _identify(ds, ENHANCED_MR, 3)
    return ds


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _mr() -> Dataset:
    from pydicom.data import get_testdata_file

    ds = _converted(pydicom.dcmread(str(get_testdata_file("MR_small.dcm"))))
    _identify(ds, MR_IMAGE, 4)
    return ds


def _csa(names: int, seed: int) -> bytes:
    """A Siemens CSA2 header ("SV10"): ``names`` entries (64-byte name, VM, VR, SyngoDT, items)."""
    rng = random.Random(seed)
    out = [b"SV10\x04\x03\x02\x01", struct.pack("<II", names, 77)]
    for n in range(names):
        out.append(struct.pack("<64si4siii", f"Parameter{n:04d}".encode(), 1, b"DS\x00\x00", 3, 6, 77))
        for k in range(6):
            value = f"{rng.uniform(-500, 500):.6f}".encode() if k < 1 + n % 3 else b""
            out.append(struct.pack("<iiii", len(value), len(value), 77, len(value)))
            out.append(value + b"\x00" * (-len(value) % 4))
    data = b"".join(out)
    return data + b"\x00" * (len(data) % 2)


def _siemens_csa() -> Dataset:
    """MR_small with Siemens' private CSA image and series headers (OB, explicit VR)."""
    ds = _mr()
    _identify(ds, MR_IMAGE, 5)
    raw(ds, 0x00290010, "LO", b"SIEMENS CSA HEADER")
    raw(ds, 0x00290011, "LO", b"SIEMENS MEDCOM HEADER2 ")
    raw(ds, 0x00291008, "CS", b"IMAGE NUM 4 ")
    raw(ds, 0x00291009, "LO", b"20260101")
    raw(ds, 0x00291010, "OB", _csa(40, 1))  # CSA Image Header Info, about 6 KB
    raw(ds, 0x00291018, "CS", b"MR")
    raw(ds, 0x00291019, "LO", b"20260101")
    raw(ds, 0x00291020, "OB", _csa(120, 2))  # CSA Series Header Info, about 17 KB
    raw(ds, 0x00291160, "LO", b"com ")
    return ds


def _private_sequence(undefined: bool) -> Callable[[], Dataset]:
    """The GE CT with a private sequence of 500 items (references and private values in each)."""
    def build() -> Dataset:
        ds = _ct()
        _identify(ds, CT_IMAGE, 7 if undefined else 6)
        raw(ds, 0x00510010, "LO", b"SENDIT BENCH SEQ")
        items = []
        for n in range(500):
            item = _item(ReferencedSOPClassUID=CT_IMAGE, ReferencedSOPInstanceUID=_uid(9, n + 1))
            raw(item, 0x00510010, "LO", b"SENDIT BENCH SEQ")
            raw(item, 0x00511002, "DS", f"{n * 0.5:.1f}".encode().ljust(6))
            raw(item, 0x00511003, "LO", f"ITEM {n:04d}".encode())
            item.is_undefined_length_sequence_item = undefined
            items.append(item)
        ds.add_new(0x00511001, "SQ", Sequence(items))
        ds[0x00511001].is_undefined_length = undefined
        return ds
    return build


def _large_private_ob() -> Dataset:
    ds = _ct()
    _identify(ds, CT_IMAGE, 8)
    raw(ds, 0x00530010, "LO", b"SENDIT BENCH BLOB ")
    raw(ds, 0x00531001, "OB", random.Random(8).randbytes(4 << 20))
    return ds


def _encapsulated_pdf() -> Dataset:
    """An encapsulated PDF of 40 MB: the document is one OB value before the end of the dataset."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = ds.ContentDate = "20260101"
    ds.StudyTime = "101010"
    ds.AccessionNumber, ds.Modality, ds.StudyDescription = "A1001", "DOC", "REPORT"
    ds.PatientName, ds.PatientID, ds.PatientSex = "Bench^Document", "P-DOC", "O"
    ds.SeriesNumber = 900
    ds.ConversionType, ds.BurnedInAnnotation = "SD", "YES"
    ds.DocumentTitle, ds.MIMETypeOfEncapsulatedDocument = "Scanned report", "application/pdf"
    document = b"%PDF-1.4\n" + random.Random(9).randbytes(40 << 20)
    raw(ds, 0x00420011, "OB", document + b"\x00" * (len(document) % 2))
    _identify(ds, ENCAPSULATED_PDF, 9)
    return ds


def _ob_in_sequence() -> Dataset:
    """The GE CT with a private sequence (defined lengths) whose one item holds a private OB of 40 MB."""
    ds = _ct()
    _identify(ds, CT_IMAGE, 17)
    raw(ds, 0x00570010, "LO", b"SENDIT BENCH NESTED ")
    item = Dataset()
    raw(item, 0x00570010, "LO", b"SENDIT BENCH NESTED ")
    raw(item, 0x00571002, "OB", random.Random(17).randbytes(40 << 20))
    raw(item, 0x00571003, "LO", b"AFTER THE BLOB")
    item.is_undefined_length_sequence_item = False
    ds.add_new(0x00571001, "SQ", Sequence([item]))
    ds[0x00571001].is_undefined_length = False
    return ds


def _large_ut() -> Dataset:
    ds = _ct()
    _identify(ds, CT_IMAGE, 10)
    raw(ds, 0x00550010, "LO", b"SENDIT BENCH XML ")
    rows = "".join(f'<parameter name="p{n:06d}" value="{n * 0.25:.2f}"/>\n' for n in range(70000))
    text = f"<protocol>\n{rows}</protocol>".encode()
    raw(ds, 0x00551001, "UT", text + b" " * (len(text) % 2))  # about 3 MB
    return ds


def _charset(charset: list[str], series: int) -> Callable[[], Dataset]:
    """The GE CT with Specific Character Set ``charset`` and person names and descriptions beyond ASCII,
    encoded by pydicom (ISO 2022: each run of kanji between escape sequences, ASCII again before '^' and '=')."""
    def build() -> Dataset:
        ds = _ct()
        _identify(ds, CT_IMAGE, series)
        ds.SpecificCharacterSet = charset
        for keyword, text in TEXTS[charset[-1]]:
            setattr(ds, keyword, text)
        return ds
    return build


TEXTS = {
    "ISO 2022 IR 87": [("StudyDescription", "頭部単純ＣＴ"), ("SeriesDescription", "軸位 5mm"),
                       ("PatientName", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
                       ("ReferringPhysicianName", "Suzuki^Ichiro=鈴木^一郎")],
    "GB18030": [("StudyDescription", "头部平扫"), ("SeriesDescription", "轴位 5mm"),
                ("PatientName", "Wang^XiaoDong=王^小东="), ("ReferringPhysicianName", "Li^Hua=李^华=")],
}


def _syntax_only() -> Dataset:
    return _ct()


CLASSES = {c.name: c for c in [
    FileClass("ct-explicit", "GE CT, explicit VR LE, GEMS privates with their VRs", EXPLICIT, _ct),
    FileClass("ct-implicit-ge", "the same GE CT in implicit VR LE (private creators the dictionary knows)",
              IMPLICIT, _ct),
    FileClass("mr-enhanced", "enhanced MR, 200 frames, per-frame functional groups", EXPLICIT, _enhanced_mr, 100),
    FileClass("siemens-csa", "MR with SIEMENS CSA HEADER (0029,1010/1020) OB of 6 and 17 KB", EXPLICIT,
              _siemens_csa),
    FileClass("private-sq-defined", "GE CT + private SQ of 500 items, defined lengths", EXPLICIT,
              _private_sequence(False)),
    FileClass("private-sq-undefined", "GE CT + private SQ of 500 items, undefined lengths", EXPLICIT,
              _private_sequence(True)),
    FileClass("large-private-ob", "GE CT + private OB of 4 MB", EXPLICIT, _large_private_ob, 50),
    FileClass("large-ob-40mb", "encapsulated PDF, one OB of 40 MB", EXPLICIT, _encapsulated_pdf, 10),
    FileClass("large-ut", "GE CT + private UT of 3 MB", EXPLICIT, _large_ut, 50),
    FileClass("iso2022-jp", "GE CT, \\ISO 2022 IR 87 Japanese names and descriptions", EXPLICIT,
              _charset(["", "ISO 2022 IR 87"], 15)),
    FileClass("gb18030", "GE CT, GB18030 Chinese names and descriptions", EXPLICIT,
              _charset(["GB18030"], 16)),
    FileClass("ct-creator-un", "GE CT forwarded with private creators as UN, private elements as UN", EXPLICIT,
              _ct_private_as("UN")),
    FileClass("ct-creator-sh", "GE CT forwarded with private creators as SH, private elements as UN", EXPLICIT,
              _ct_private_as("SH")),
    FileClass("creator-un-multivalued", "GE CT + a private block whose UN creator reads 'A\\B'", EXPLICIT,
              _creator_un_multivalued),
    FileClass("explicit-big-endian", "GE CT, explicit VR big endian", BIG_ENDIAN, _syntax_only),
    FileClass("deflated", "GE CT, deflated explicit VR LE", DEFLATED, _syntax_only),
    FileClass("large-ob-in-sq", "GE CT + private SQ whose item holds a private OB of 40 MB", EXPLICIT,
              _ob_in_sequence, 10),
]}


def write(ds: Dataset, syntax: str) -> bytes:
    """The file: preamble, file meta and ``ds`` in ``syntax``, as pydicom 3.x and 2.3 both write it."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = _SOP
    ds.preamble = b"\x00" * 128
    buffer = io.BytesIO()
    if not PYDICOM3:
        ds.is_little_endian, ds.is_implicit_VR = syntax != BIG_ENDIAN, syntax == IMPLICIT
        ds.save_as(buffer, write_like_original=False)
    elif syntax == BIG_ENDIAN:  # pydicom 3 converts to big endian only when asked to force the encoding
        pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def template(name: str) -> bytes:
    file_class = CLASSES[name]
    return write(file_class.dataset(), file_class.syntax)


def _meta_end(data: bytes) -> int:
    """Where the file meta group (explicit VR LE after the preamble) ends."""
    pos = 132
    while data[pos:pos + 2] == b"\x02\x00":
        if data[pos + 4:pos + 6] in (b"OB", b"OW", b"UN", b"UT", b"SQ"):
            pos += 12 + struct.unpack_from("<L", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos


def instance(template_bytes: bytes, syntax: str, series: int, number: int) -> bytes:
    """File ``number`` (from 1) of the series, from its template: its own SOP Instance UID and InstanceNumber."""
    def patch(data: bytes) -> bytes:
        return data.replace(_SOP.encode(), _file_uid(series, number)).replace(
            _NUMBER.encode(), f"{number:09d}".encode())

    if syntax != DEFLATED:
        return patch(template_bytes)
    end = _meta_end(template_bytes)
    dataset = patch(zlib.decompress(template_bytes[end:], -15))
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    return patch(template_bytes[:end]) + deflate.compress(dataset) + deflate.flush()


def generate(name: str, folder: Path, files: int) -> list[Path]:
    """``files`` files of class ``name`` in ``folder`` (created), named IM00001.dcm on."""
    folder.mkdir(parents=True, exist_ok=True)
    file_class = CLASSES[name]
    data = template(name)
    series = list(CLASSES).index(name) + 1
    paths = []
    for number in range(1, files + 1):
        path = folder / f"IM{number:05d}.dcm"
        path.write_bytes(instance(data, file_class.syntax, series, number))
        paths.append(path)
    return paths
