"""What the header costs to store, per instance, in a schema the service imported into (tests/bench/run.py
calls it after each service run): the instance table's bytes (heap, TOAST, indexes) per row, and by class (SOP
Class and Transfer Syntax) the header's DICOM JSON text and its stored (compressed) jsonb. Then what a series
repeats: for the first series of each class, the top-level elements whose value is the same in every instance
of the series, and what the header would cost stored as that common part once a series plus each instance's
remainder (measured by storing both in a scratch table compressed as instance.header is). Figures, not
assertions.
"""

from __future__ import annotations

from typing import Any

import psycopg

_TABLE = """
SELECT count(*), pg_relation_size('instance'), pg_table_size('instance') - pg_relation_size('instance'),
       pg_indexes_size('instance')
FROM instance
"""

_BY_CLASS = """
SELECT sop_class_uid, transfer_syntax_uid, count(*), avg(octet_length(header::text)), avg(pg_column_size(header))
FROM instance GROUP BY 1, 2 ORDER BY 1, 2
"""

# The first series of each class, its instances' top-level elements, and whether each element's value is the
# same in every instance of its series (compared by md5 of the value's text: the values can be 100s of KB).
_SPLIT = """
CREATE TEMP TABLE split_source ON COMMIT DROP AS
SELECT i.id, i.series, i.sop_class_uid, i.transfer_syntax_uid, i.header
FROM instance i
WHERE i.series IN (SELECT min(series) FROM instance GROUP BY sop_class_uid, transfer_syntax_uid);
CREATE TEMP TABLE split_element ON COMMIT DROP AS
SELECT s.id, s.series, e.key, e.value, md5(e.value::text) AS digest FROM split_source s, jsonb_each(s.header) e;
CREATE TEMP TABLE split_common ON COMMIT DROP AS
SELECT e.series, e.key, e.digest FROM split_element e
GROUP BY e.series, e.key, e.digest
HAVING count(*) = (SELECT count(*) FROM split_source s WHERE s.series = e.series);
CREATE TEMP TABLE split_stored (kind text, series bigint, id bigint, part jsonb) ON COMMIT DROP;
"""

_STORE_SPLIT = """
INSERT INTO split_stored
SELECT 'series', c.series, NULL, jsonb_object_agg(e.key, e.value)
FROM split_common c JOIN LATERAL (SELECT key, value FROM split_element x
                                  WHERE x.series = c.series AND x.key = c.key LIMIT 1) e ON true
GROUP BY c.series;
INSERT INTO split_stored
SELECT 'instance', e.series, e.id, coalesce(jsonb_object_agg(e.key, e.value)
                                            FILTER (WHERE c.key IS NULL), '{}')
FROM split_element e LEFT JOIN split_common c USING (series, key, digest)
GROUP BY e.series, e.id;
"""

_SPLIT_FIGURES = """
SELECT s.sop_class_uid, s.transfer_syntax_uid, count(*),
       avg(pg_column_size(s.header)),
       (SELECT count(*) FROM split_common c WHERE c.series = min(s.series)),
       (SELECT count(*) FROM split_element e WHERE e.id = min(s.id)),
       (SELECT pg_column_size(part) FROM split_stored p WHERE p.kind = 'series' AND p.series = min(s.series)),
       (SELECT avg(pg_column_size(part)) FROM split_stored p WHERE p.kind = 'instance' AND p.series = min(s.series))
FROM split_source s GROUP BY s.sop_class_uid, s.transfer_syntax_uid ORDER BY 1, 2
"""


def footprint(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Bytes per instance of the instance table, and of the header by class."""
    row = conn.execute(_TABLE).fetchone()
    assert row is not None
    rows, heap, toast, indexes = (int(v) for v in row)
    per = max(rows, 1)
    classes = [{"sop_class": sop, "syntax": syntax, "instances": int(n), "json_bytes": float(text or 0),
                "stored_bytes": float(stored or 0)} for sop, syntax, n, text, stored in conn.execute(_BY_CLASS)]
    return {"instances": rows, "heap_per_instance": heap / per, "toast_per_instance": toast / per,
            "indexes_per_instance": indexes / per, "total_per_instance": (heap + toast + indexes) / per,
            "classes": classes}


def series_split(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """For the first series of each class: the stored header per instance as it is, and split into what every
    instance of the series shares (stored once) and each instance's remainder."""
    with conn.transaction():
        conn.execute(_SPLIT)
        if conn.execute("SELECT to_jsonb(a) ->> 'attcompression' FROM pg_attribute a WHERE a.attrelid ="
                        " 'instance'::regclass AND a.attname = 'header'").fetchone() == ("l",):
            conn.execute("ALTER TABLE split_stored ALTER COLUMN part SET COMPRESSION lz4")
        conn.execute(_STORE_SPLIT)
        figures = [{"sop_class": sop, "syntax": syntax, "instances": int(n), "stored_bytes": float(stored),
                    "common_elements": int(common), "elements": int(elements), "common_stored_bytes": int(shared),
                    "rest_stored_bytes": float(rest)}
                   for sop, syntax, n, stored, common, elements, shared, rest in conn.execute(_SPLIT_FIGURES)]
    return figures


def report(figures: dict[str, Any], split: list[dict[str, Any]]) -> str:
    lines = [f"instance table, {figures['instances']:,} rows, bytes per instance: heap "
             f"{figures['heap_per_instance']:,.0f}, TOAST {figures['toast_per_instance']:,.0f}, indexes "
             f"{figures['indexes_per_instance']:,.0f}, total {figures['total_per_instance']:,.0f}",
             "| SOP class | syntax | instances | header JSON bytes | stored jsonb bytes |", "|---|---|---:|---:|---:|"]
    lines += [f"| {c['sop_class']} | {c['syntax']} | {c['instances']:,} | {c['json_bytes']:,.0f} | "
              f"{c['stored_bytes']:,.0f} |" for c in figures["classes"]]
    if split:
        lines += ["what a series repeats (first series of each class): elements the same in every instance, and the"
                  " header stored as series part once + each instance's rest",
                  "| SOP class | syntax | instances | common / elements | stored now | series part | rest | "
                  "per instance, split |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for s in split:
            per = s["rest_stored_bytes"] + s["common_stored_bytes"] / max(s["instances"], 1)
            lines.append(f"| {s['sop_class']} | {s['syntax']} | {s['instances']} | {s['common_elements']} / "
                         f"{s['elements']} | {s['stored_bytes']:,.0f} | {s['common_stored_bytes']:,} | "
                         f"{s['rest_stored_bytes']:,.0f} | {per:,.0f} |")
    return "\n".join(lines)
