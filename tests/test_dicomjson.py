"""Our DICOM JSON model against pydicom's own to_json_dict, on pydicom's real test files."""

from __future__ import annotations

from typing import Any

import pydicom
import pytest

from sendit_watcher.dicom.dicomjson import dataset_to_json
from sendit_watcher.dicom.values import INLINE_BINARY_LIMIT
from tests.helpers import pydicom_test_files

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "JPEG2000.dcm", "image_dfl.dcm",
         "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "nested_priv_SQ.dcm"]


def comparable(model: dict[str, Any]) -> dict[str, Any]:
    """Drop what the two models may legitimately spell differently: binary (bulk) values."""
    out = {}
    for tag, element in model.items():
        element = dict(element)
        element.pop("InlineBinary", None)
        element.pop("BulkDataURI", None)
        if element.get("vr") == "SQ" and "Value" in element:
            element["Value"] = [comparable(item) for item in element["Value"]]
        out[tag] = element
    return out


@pytest.mark.parametrize("name", FILES)
def test_matches_pydicom_to_json_dict(name: str) -> None:
    path = pydicom_test_files() / name
    if not path.exists():
        pytest.fail(f"pydicom test file {name} is missing from this pydicom install")
    ours = dataset_to_json(pydicom.dcmread(path, stop_before_pixels=True, force=True))
    theirs = pydicom.dcmread(path, stop_before_pixels=True, force=True).to_json_dict(
        bulk_data_threshold=10**9, bulk_data_element_handler=None)
    assert comparable(ours) == comparable(theirs)
    assert "7FE00010" not in ours


def test_person_name_groups_and_small_binary_inline() -> None:
    ds = pydicom.Dataset()
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.add_new(0x00091001, "OB", b"\x01\x02")
    ds.add_new(0x00091002, "OB", b"\x00" * (INLINE_BINARY_LIMIT + 1))
    model = dataset_to_json(ds)
    assert model["00100010"]["Value"] == [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
                                           "Phonetic": "やまだ^たろう"}]
    assert model["00091001"] == {"vr": "OB", "InlineBinary": "AQI="}
    assert model["00091002"] == {"vr": "OB"}


@pytest.mark.parametrize("name", ["chrSQEncoding.dcm", "chrSQEncoding1.dcm"])
def test_a_sequence_item_is_decoded_with_its_own_character_set(name: str) -> None:
    from pydicom.data import get_charset_files

    dataset = pydicom.dcmread(get_charset_files(name)[0])
    item = dataset_to_json(dataset)["00321064"]["Value"][0]
    expected = str(pydicom.dcmread(get_charset_files(name)[0])[0x00321064].value[0][0x00100010].value)
    assert item["00100010"]["Value"][0]["Alphabetic"] == expected.split("=")[0]
    assert "\ufffd" not in str(item) and "山田" in str(item)
