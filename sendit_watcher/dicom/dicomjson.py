"""A dataset's header in the DICOM JSON model (PS3.18 F.2), without bulk data, fast enough to do per file."""

from __future__ import annotations

import base64
import math
from typing import Any

from sendit_watcher.dicom.elements import BINARY_VRS, FLOAT_VRS, INT_VRS, SIMPLE_TEXT_VRS, Codec, Decoder, decode_text
from sendit_watcher.dicom.tags import SPECIFIC_CHARACTER_SET
from sendit_watcher.dicom.values import INLINE_BINARY_LIMIT, NON_FINITE, clean

__all__ = ["dataset_to_json", "is_multi_value", "jsonb_safe", "scalar"]


# VRs whose fast-path values are already JSON-ready (tags as hex, numbers unpacked from binary)
_PLAIN_VRS = frozenset({"AT", "FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"})


def dataset_to_json(dataset: Any, codec: Codec | None = "") -> dict[str, dict[str, Any]]:
    """The DICOM JSON object of a pydicom Dataset (or sequence item); file meta is not part of it.

    Elements are decoded from their raw bytes where possible; pydicom converts the rest.
    ``codec`` is the character set's Python codec ("" = read it from the dataset, None = leave text to pydicom).
    """
    decoder = Decoder(dataset, codec)
    text_codec = decoder.codec or "latin-1"
    model: dict[str, dict[str, Any]] = {}
    keys = _KEYS
    if len(keys) > _KEYS_LIMIT:  # hostile files can carry any number of distinct tags: stay bounded
        keys.clear()
    for tag, vr, raw in decoder.raw_elements():
        key = keys.get(tag)
        if key is None:
            key = keys[tag] = f"{tag:08X}"
        if raw is None:
            model[key] = _element(dataset[tag], decoder.codec)
        elif vr in SIMPLE_TEXT_VRS:
            model[key] = _simple_text(vr, raw.value, text_codec)
        elif vr in BINARY_VRS:
            model[key] = _binary(vr, raw.value)
        else:
            values = decoder.values(vr, raw)
            entry: dict[str, Any] = {"vr": vr}
            if values:
                entry["Value"] = values if vr in _PLAIN_VRS else [scalar(vr, v) for v in values]
            model[key] = entry
    return model


_KEYS: dict[int, str] = {}  # tag -> "GGGGEEEE", shared by every file this process reads
_KEYS_LIMIT = 16384


def _simple_text(vr: str, data: bytes | None, codec: Codec) -> dict[str, Any]:
    """A text element straight from its bytes, by elements.decode_text."""
    values = decode_text(vr, data, codec) if data else []
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _binary(vr: str, value: bytes | None) -> dict[str, Any]:
    if value and len(value) <= INLINE_BINARY_LIMIT:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    return {"vr": vr}


def _element(element: Any, codec: Codec | None) -> dict[str, Any]:
    vr = _plain_vr(element.VR)
    value = element.value
    entry: dict[str, Any] = {"vr": vr}
    if vr == "SQ":
        if value:
            entry["Value"] = [dataset_to_json(item, _item_codec(item, codec)) for item in value]
    elif vr in BINARY_VRS:
        if value and len(value) <= INLINE_BINARY_LIMIT:
            entry["InlineBinary"] = base64.b64encode(bytes(value)).decode("ascii")
    elif value is not None and value != "" and value != b"":
        values = list(value) if is_multi_value(value) else [value]
        if values:
            entry["Value"] = [scalar(vr, v) for v in values]
    return entry


def _plain_vr(vr: Any) -> str:
    """'US or SS' (ambiguous, left by pydicom for implicit VR) becomes its first choice."""
    text = str(getattr(vr, "value", vr)) if vr else "UN"  # pydicom 2 uses an Enum of str
    return text.split(" ", 1)[0]


def is_multi_value(value: Any) -> bool:
    """True for a pydicom MultiValue (or list) holding several values of one element."""
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def scalar(vr: str, value: Any) -> Any:
    """One value of a PN, AT, number or text element as the DICOM JSON model has it."""
    if value is None or value == "":
        return None
    if vr == "PN":
        return _person_name(str(value))
    if vr == "AT":
        return value if isinstance(value, str) else f"{int(value):08X}"
    if vr in INT_VRS:
        return _number(value, int)
    if vr in FLOAT_VRS:
        return _number(value, float)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _number(value: Any, kind: type) -> Any:
    """A JSON number, or the original text when the file holds something that is not one."""
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return str(value)
    if isinstance(number, float) and not math.isfinite(number):
        return NON_FINITE[repr(number)]
    return number


def _person_name(text: str) -> dict[str, str]:
    groups = text.split("=")
    keys = ("Alphabetic", "Ideographic", "Phonetic")
    return {key: group for key, group in zip(keys, groups, strict=False) if group}


def _item_codec(item: Any, codec: Codec | None) -> Codec | None:
    """A sequence item's own SpecificCharacterSet wins over its parent's ("" = read it from the item)."""
    return "" if SPECIFIC_CHARACTER_SET in item else codec


def jsonb_safe(value: Any) -> Any:
    """``value`` with every non-finite number as "NaN"/"Infinity"/"-Infinity", every NUL character removed and
    every lone surrogate replaced by U+FFFD, so that json.dumps(allow_nan=False) and jsonb accept it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else NON_FINITE[repr(value)]
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {jsonb_safe(key): jsonb_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonb_safe(item) for item in value]
    return value
