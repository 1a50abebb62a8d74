"""``run --demo``: drop sample studies into a watch root the way upload tools do (write NAME.tmp, rename)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

__all__ = ["start_demo", "write_sample_study"]

log = logging.getLogger(__name__)

_SOURCES = ("CT_small.dcm", "MR_small.dcm")


def write_sample_study(folder: Path, instances: int, source: str = "CT_small.dcm") -> None:
    """Write ``instances`` files of one new study (pydicom's sample file with fresh UIDs) into ``folder``."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(str(get_testdata_file(source)))
    template.StudyInstanceUID, template.SeriesInstanceUID = generate_uid(), generate_uid()
    template.PatientID, template.PatientName = "DEMO-0001", "Demo^Patient"
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(1, instances + 1):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = number
        template.save_as(folder / f"IM{number:05d}.dcm")


def _drop(root: Path, count: int, interval: float) -> None:
    time.sleep(interval)
    for n in range(1, count + 1):
        name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        temporary = root / f"{name}.tmp"
        write_sample_study(temporary, 20, _SOURCES[n % len(_SOURCES)])
        temporary.rename(root / name)
        log.info("demo: dropped %s (20 files) through a .tmp rename", root / name)
        time.sleep(interval)


def start_demo(root: Path, count: int = 3, interval: float = 2.0) -> threading.Thread:
    """Drop ``count`` sample studies into ``root``, one every ``interval`` seconds, in the background."""
    thread = threading.Thread(target=_drop, args=(root, count, interval), name="demo", daemon=True)
    thread.start()
    return thread
