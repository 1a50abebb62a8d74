"""The import engine against real PostgreSQL and pydicom's real test files."""

from __future__ import annotations

import os
import shutil
import string
from pathlib import Path
from random import Random

import pydicom
import pytest
from pydicom.uid import generate_uid

from sendit_watcher.batch_import import import_batch
from sendit_watcher.config import Config, DatabaseConfig
from sendit_watcher.db import Connection
from sendit_watcher.dicom import lean
from sendit_watcher.importer import Result
from sendit_watcher.parsers import InlineParser, PoolParser
from sendit_watcher.walk import FileEntry, walk
from tests.helpers import count_rows, import_folder, make_config, make_study, pydicom_test_files


def files_in(folder: Path) -> int:
    return sum(1 for _ in walk(str(folder)))


def test_every_file_of_pydicom_tree_is_accounted_for_twice_in_a_row(conn: Connection, config: Config,
                                                                  dicom_tree: Path) -> None:
    parser = PoolParser(2)
    try:
        first = import_folder(conn, config, dicom_tree, parser)
        after_first = count_rows(conn)
        second = import_folder(conn, config, dicom_tree, parser)
    finally:
        parser.close()
    assert isinstance(first, Result) and isinstance(second, Result)
    assert first.files == files_in(dicom_tree) > 150
    assert first.instances + first.rejected == first.files
    assert after_first["instance"] + after_first["rejected_file"] == first.files
    assert first.instances > 100 and first.status == "done"
    assert second.unchanged and count_rows(conn) == after_first
    assert (second.instances, second.rejected) == (first.instances, first.rejected)


def test_rejections_carry_their_reasons(conn: Connection, config: Config, dicom_tree: Path) -> None:
    import_folder(conn, config, dicom_tree)
    reasons = dict(conn.execute("SELECT path, reason FROM rejected_file").fetchall())
    assert reasons["README.txt"] == "not-dicom"
    assert reasons["dicomdirtests/DICOMDIR"] == "dicomdir"
    assert reasons["priv_SQ.dcm"] == "no-sop-instance-uid"
    assert "duplicate" in reasons.values()
    imported = {row[0] for row in conn.execute("SELECT path FROM instance")}
    # deflate, big endian, implicit VR, no file meta, compressed transfer syntaxes all import
    for name in ("image_dfl.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "ExplVR_LitEndNoMeta.dcm",
                 "JPEG2000.dcm", "MR_small_RLE.dcm", "CT_small.dcm"):
        assert name in imported or reasons.get(name) == "duplicate", name


def test_duplicate_instance_names_the_instance_it_duplicates(conn: Connection, config: Config,
                                                            tmp_path: Path) -> None:
    folder = tmp_path / "dups"
    folder.mkdir()
    for name in ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        shutil.copy(pydicom_test_files() / name, folder / name)
    outcome = import_folder(conn, config, folder)
    assert isinstance(outcome, Result) and (outcome.instances, outcome.rejected) == (1, 2)
    sop = pydicom.dcmread(folder / "MR_small.dcm").SOPInstanceUID
    rows = conn.execute("SELECT reason, duplicate_of, detail FROM rejected_file ORDER BY path").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("duplicate", sop)] * 2
    assert all(r[2].endswith("/MR_small.dcm") for r in rows)


def test_a_folder_that_gained_files_adds_only_the_new_instances(conn: Connection, config: Config,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    write_instance(folder / "a.dcm")
    first = import_folder(conn, config, folder)
    write_instance(folder / "b.dcm")
    second = import_folder(conn, config, folder)
    assert isinstance(first, Result) and isinstance(second, Result)
    assert (second.instances, second.new_instances, second.files) == (2, 1, 2)
    assert count_rows(conn)["instance"] == 2


def test_sql_and_quotes_in_tag_values_are_stored_verbatim(conn: Connection, config: Config, tmp_path: Path) -> None:
    folder = tmp_path / "hostile"
    folder.mkdir()
    hostile = "O'Brien\"; DROP TABLE instance; --^Robert'); DELETE FROM batch;--"
    write_instance(folder / "x.dcm", PatientName=hostile, StudyDescription="a\\b 'c' $$d$$ %s %(x)s")
    import_folder(conn, config, folder)
    assert conn.execute("SELECT patient_name FROM patient").fetchone() == (hostile,)
    assert conn.execute("SELECT header->'00100010'->'Value'->0->>'Alphabetic' FROM instance").fetchone() == (hostile,)
    assert count_rows(conn)["batch"] == 1


def test_jsonb_query_finds_a_tag_that_is_not_a_column(conn: Connection, config: Config, dicom_tree: Path) -> None:
    import_folder(conn, config, dicom_tree)
    found = {row[0] for row in conn.execute(
        "SELECT path FROM instance WHERE (header->'00180050'->'Value'->>0)::float = 5.0")}
    expected = set()
    for row in conn.execute("SELECT path FROM instance"):
        ds = pydicom.dcmread(dicom_tree / row[0], stop_before_pixels=True, force=True)
        if "SliceThickness" in ds and ds.SliceThickness is not None and float(ds.SliceThickness) == 5.0:
            expected.add(row[0])
    assert found == expected and "CT_small.dcm" in found


def test_main_tags_only_leaves_the_header_out(conn: Connection, database: DatabaseConfig, tmp_path: Path) -> None:
    config = make_config(database, full_header=False)
    folder = tmp_path / "s"
    folder.mkdir()
    write_instance(folder / "x.dcm", Modality="CT", SeriesNumber="7")
    import_folder(conn, config, folder)
    row = conn.execute("SELECT i.header, s.modality, s.series_number FROM instance i JOIN series s ON s.id = i.series")
    assert row.fetchone() == (None, "CT", 7)


def test_symlinks_fifos_and_empty_files_are_rejected_without_blocking(conn: Connection, config: Config,
                                                                    tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    (folder / "sub").mkdir(parents=True)
    write_instance(folder / "sub" / "real.dcm")
    os.symlink("/etc/passwd", folder / "passwd-link")
    os.symlink(tmp_path, folder / "dir-link")
    os.mkfifo(folder / "pipe")
    (folder / "empty.dcm").write_bytes(b"")
    outcome = import_folder(conn, config, folder)
    assert isinstance(outcome, Result) and (outcome.files, outcome.instances, outcome.rejected) == (5, 1, 4)
    reasons = dict(conn.execute("SELECT path, reason FROM rejected_file").fetchall())
    assert reasons == {"passwd-link": "symlink", "dir-link": "symlink", "pipe": "not-a-regular-file",
                       "empty.dcm": "empty-file"}
    assert conn.execute("SELECT path FROM instance").fetchall() == [("sub/real.dcm",)]


def test_empty_folder_is_recorded_empty(conn: Connection, config: Config, tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    outcome = import_folder(conn, config, tmp_path / "nothing")
    assert isinstance(outcome, Result) and outcome.status == "empty" and outcome.files == 0


def test_a_vanished_folder_loses_its_rows(conn: Connection, config: Config, tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    shutil.copy(pydicom_test_files() / "CT_small.dcm", folder / "a.dcm")
    (folder / "junk").write_bytes(b"not dicom")
    first = import_folder(conn, config, folder)
    assert isinstance(first, Result) and (first.instances, first.rejected) == (1, 1)
    shutil.rmtree(folder)
    outcome = import_batch(conn, config, InlineParser(), first.batch_id)
    assert isinstance(outcome, Result) and (outcome.status, outcome.files, outcome.removed) == ("empty", 0, 2)
    assert count_rows(conn)["instance"] == count_rows(conn)["rejected_file"] == 0


def test_a_folder_replaced_by_a_file_of_its_name_loses_its_rows(conn: Connection, config: Config,
                                                                 tmp_path: Path) -> None:
    """Found by an outside attack: the batch failed ("is not a directory") and its rows stayed for good."""
    folder = tmp_path / "q7"
    make_study(folder, 2)
    assert import_folder(conn, config, folder).instances == 2  # type: ignore[union-attr]
    shutil.rmtree(folder)
    folder.write_text("x")
    outcome = import_folder(conn, config, folder)
    assert isinstance(outcome, Result) and (outcome.status, outcome.instances, outcome.removed) == ("empty", 0, 2)
    assert count_rows(conn)["instance"] == 0


def test_a_changed_file_replaces_its_own_record(conn: Connection, config: Config, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "x.dcm").write_bytes(b"not yet")
    import_folder(conn, config, folder)
    write_instance(folder / "x.dcm")
    outcome = import_folder(conn, config, folder)
    assert isinstance(outcome, Result) and (outcome.instances, outcome.rejected) == (1, 0)


def test_walk_entries_are_sorted_and_relative(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z").write_bytes(b"1")
    (tmp_path / "a").write_bytes(b"22")
    entries = list(walk(str(tmp_path)))
    assert [e.path for e in entries] == ["a", "b/z"]
    assert isinstance(entries[0], FileEntry) and entries[0].size == 2


def write_instance(path: Path, **values: str) -> str:
    """Write a small real DICOM file (from CT_small.dcm) with fresh UIDs; returns its SOPInstanceUID."""
    ds = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return str(ds.SOPInstanceUID)


def test_a_value_longer_than_a_mebibyte_is_left_out_of_the_header_and_the_file_is_an_instance(
        conn: Connection, config: Config, tmp_path: Path) -> None:
    folder = tmp_path / "long"
    folder.mkdir()
    write_instance(folder / "long.dcm", TextValue="x" * (2 << 20), StudyComments="short and kept")
    write_instance(folder / "plain.dcm")
    outcome = import_folder(conn, config, folder)
    assert isinstance(outcome, Result) and (outcome.status, outcome.instances) == ("done", 2)
    header = conn.execute("SELECT header FROM instance WHERE path = 'long.dcm'").fetchone()[0]  # type: ignore[index]
    assert header["0040A160"] == {"vr": "UT"}  # TextValue: the element stays, its value is left out
    assert header["00324000"]["Value"] == ["short and kept"]


def test_a_path_of_long_names_that_do_not_compress_is_a_row_like_any_other(
        conn: Connection, config: Config, tmp_path: Path) -> None:
    folder = tmp_path / "deep-names"
    random = Random(11)  # names that do not compress: a btree entry of the path itself would exceed its limit
    deep = folder.joinpath(*("".join(random.choices(string.ascii_letters + string.digits, k=250))
                             for _ in range(14)))
    os.makedirs(deep)
    write_instance(deep / "a.dcm")
    (deep / "notes.txt").write_text("not DICOM")
    write_instance(folder / "b.dcm")
    make_study(folder / "copy", 1)
    shutil.copy(next((folder / "copy").iterdir()), deep / "duplicate.dcm")  # a duplicate row, as long
    outcome = import_folder(conn, config, folder)
    assert isinstance(outcome, Result) and (outcome.status, outcome.instances, outcome.rejected) == ("done", 3, 2)
    longest = conn.execute("SELECT max(octet_length(path)) FROM (SELECT path FROM instance UNION ALL"
                           " SELECT path FROM rejected_file) rows").fetchone()
    assert longest is not None and longest[0] > 3500
    again = import_folder(conn, config, folder)  # and the mirror holds on the next import
    assert isinstance(again, Result) and again.unchanged and count_rows(conn)["instance"] == 3


@pytest.mark.parametrize("reader", ["lean", "pydicom"])
def test_uids_that_differ_only_in_bytes_no_uid_has_are_never_one_key(
        conn: Connection, config: Config, tmp_path: Path, reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lean, "ENABLED", reader == "lean")
    folder = tmp_path / "uids"
    folder.mkdir()
    prefix = generate_uid()[:40]
    # Before, a NUL inside was dropped (".7\x008" read as ".78", a duplicate of clean.dcm) and bytes that are not
    # UTF-8 became U+FFFD (".7\xfe" and ".7\xff" one UID).
    for name, raw in (("clean.dcm", b"78"), ("nul.dcm", b"7\x008"), ("fe.dcm", b"7\xfe"), ("ff.dcm", b"7\xff")):
        placeholder = prefix + "." + "X" * len(raw)  # as long as the variant, which replaces it byte for byte
        write_instance(folder / name, SpecificCharacterSet="ISO_IR 192", SOPInstanceUID=placeholder)
        data = (folder / name).read_bytes().replace(placeholder.encode(), prefix.encode() + b"." + raw)
        (folder / name).write_bytes(data)
    outcome = import_folder(conn, config, folder)
    assert isinstance(outcome, Result) and (outcome.instances, outcome.rejected) == (1, 3)
    assert conn.execute("SELECT path, sop_instance_uid FROM instance").fetchall() == [("clean.dcm", prefix + ".78")]
    rejected = dict(conn.execute("SELECT path, reason FROM rejected_file").fetchall())
    assert rejected == {"nul.dcm": "invalid-uid", "fe.dcm": "invalid-uid", "ff.dcm": "invalid-uid"}  # no duplicate


def test_files_contradicting_their_study_are_recorded_and_people_without_an_id_are_not_merged(
        conn: Connection, config: Config, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    study = generate_uid()
    for name, patient in (("a.dcm", "P-1"), ("b.dcm", "P-2")):  # one StudyInstanceUID, two PatientIDs
        write_instance(folder / name, PatientID=patient)
        ds = pydicom.dcmread(folder / name)
        ds.StudyInstanceUID = study
        ds.save_as(folder / name)
    write_instance(folder / "anon1.dcm", PatientID="")  # two people without an ID, two studies
    write_instance(folder / "anon2.dcm", PatientID="")
    outcome = import_folder(conn, config, folder)
    assert isinstance(outcome, Result) and outcome.instances == 4
    conflicts = conn.execute("SELECT path, level, tag FROM main_tag_conflict").fetchall()
    assert conflicts == [("b.dcm", "study", "PatientID (0010,0020)")]
    assert conn.execute("SELECT count(*) FROM patient WHERE patient_id = ''").fetchone() == (2,)
    assert conn.execute("SELECT count(DISTINCT st.patient) FROM study st JOIN patient p ON p.id = st.patient"
                        " WHERE p.patient_id = ''").fetchone() == (2,)


def test_a_known_sequence_written_as_un_is_stored_as_the_sequence_pydicom_reads(
        conn: Connection, config: Config, tmp_path: Path) -> None:
    import struct

    def implicit(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value

    item_body = implicit(0x00080100, b"CODE01") + implicit(0x00080104, b"Meaning ")
    item = struct.pack("<HHL", 0xFFFE, 0xE000, len(item_body)) + item_body
    folder = tmp_path / "un"
    folder.mkdir()
    write_instance(folder / "a.dcm", ProcedureCodeSequence=[])  # type: ignore[arg-type]
    # ProcedureCodeSequence (0008,1032) spliced in as UN, as a receiver that did not know it writes it
    data = (folder / "a.dcm").read_bytes()
    at = data.index(b"\x08\x00\x32\x10SQ\x00\x00")
    length = struct.unpack_from("<L", data, at + 8)[0]
    end = at + 12 + (8 if length == 0xFFFFFFFF else length)  # an empty sequence: its delimitation item
    un = b"\x08\x00\x32\x10UN\x00\x00" + struct.pack("<L", len(item)) + item
    (folder / "a.dcm").write_bytes(data[:at] + un + data[end:])
    assert isinstance(import_folder(conn, config, folder), Result)
    header = conn.execute("SELECT header FROM instance").fetchone()[0]  # type: ignore[index]
    assert header["00081032"] == pydicom.dcmread(folder / "a.dcm").to_json_dict()["00081032"]
    assert header["00081032"]["Value"][0]["00080100"]["Value"] == ["CODE01"]


def test_headers_are_stored_with_lz4_where_the_server_has_it(conn: Connection, config: Config,
                                                             tmp_path: Path) -> None:
    make_study(tmp_path / "s", 3)  # CT_small: a 10 KB header, compressed when stored
    import_folder(conn, config, tmp_path / "s")
    has_lz4 = conn.execute("SELECT 'lz4' = ANY (enumvals) FROM pg_settings"
                           " WHERE name = 'default_toast_compression'").fetchone()
    expected = "lz4" if has_lz4 and has_lz4[0] else "pglz"
    stored = {row[0] for row in conn.execute("SELECT pg_column_compression(header) FROM instance")}
    assert stored == {expected}
    assert conn.execute("SELECT count(*) FROM instance WHERE header ? '00080018'").fetchone() == (3,)


def test_every_character_copy_escapes_survives_the_staging_copy(conn: Connection) -> None:
    """Each value COPY's text format must escape (backslash, newline, carriage return, tab; a NUL is dropped, as
    no text column holds one), alone, among others and beside a long value with nothing to escape, comes back
    from PostgreSQL as it was written; NULL stays NULL."""
    from sendit_watcher.importer import _copy_line

    values = ["plain", "a\\b", "line\nbreak", "cr\rhere", "tab\there", "nul\x00dropped", "\\N", "all \\\n\r\t\x00",
              "é ünïcode \\", "x" * 200_000, '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"A\\"B"}]}}']
    conn.execute("CREATE TEMP TABLE copied (n integer, value text)")
    with conn.cursor().copy("COPY copied (n, value) FROM STDIN") as copy:
        for n, value in enumerate([*values, None]):
            copy.write(_copy_line((n, value)))
    back = [value for _, value in conn.execute("SELECT n, value FROM copied ORDER BY n")]
    assert back == [v.replace("\x00", "") for v in values] + [None]
