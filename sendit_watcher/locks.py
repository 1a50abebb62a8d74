"""The advisory-lock key space of sendit-watcher: PostgreSQL's two-key form, under class keys of its own.

Every advisory lock the project takes is ``pg_advisory_xact_lock(classid int4, objid int4)`` (``objsubid = 2`` in
pg_locks), never the one-bigint form (``objsubid = 1``) that other clients use with small numbers: another
session's ``pg_advisory_lock(1)`` can neither stall an import nor make batch 1 look ``importing``.

Batch ids are bigint: a batch's key is (BATCH_CLASS + id >> 32, the low 32 bits of id as a signed int4), so
every id up to MAX_BATCH_ID (about 2.4e18; a bigserial reaches it after that many batches) has a key of its own,
and pg_locks gives the id back as ``(classid - BATCH_CLASS) << 32 | objid`` (it shows both keys as unsigned oids).
"""

from __future__ import annotations

__all__ = ["SERVICE_CLASS", "BATCH_CLASS", "MAX_BATCH_ID", "MIGRATION_LOCK", "FINISH_LOCK", "TALLY_LOCK",
           "LEGACY_LOCKS", "batch_lock"]

SERVICE_CLASS = 0x5E4D0000  # the locks of the whole database: migrating, numbering finished batches
BATCH_CLASS = SERVICE_CLASS + 1  # and up: one lock per batch, held while a worker imports it
MAX_BATCH_ID = ((0x7FFFFFFF - BATCH_CLASS) << 32) | 0xFFFFFFFF

MIGRATION_LOCK = (SERVICE_CLASS, 1)  # held while migrating the schema
FINISH_LOCK = (SERVICE_CLASS, 2)  # the mirror lock: held from an import's first write to the mirror's shared rows to
#                                   its commit (batches.lock_mirror), so finished_seq follows commit order
TALLY_LOCK = (SERVICE_CLASS, 3)  # held while batch_tally's differences are folded (one folder at a time; others skip)

# The one-bigint keys versions up to 1.1.0 took for the same two locks. Taken as well (after the new key) while
# hosts of both versions may share a database during a rolling upgrade: an old and a new worker finishing at
# once still number their batches in commit order, so `listen` skips none. Batch locks need no such bridge: a
# claim is protected by its row lock (FOR UPDATE SKIP LOCKED); the batch lock only shows `importing`.
LEGACY_LOCKS = {MIGRATION_LOCK: -0x5E4D17, FINISH_LOCK: -0x5E4D18}


def batch_lock(batch_id: int) -> tuple[int, int]:
    """The (classid, objid) advisory-lock key of a batch."""
    if not 0 < batch_id <= MAX_BATCH_ID:
        raise ValueError(f"batch id {batch_id} is outside the advisory-lock key space (1..{MAX_BATCH_ID})")
    low = batch_id & 0xFFFFFFFF
    return BATCH_CLASS + (batch_id >> 32), low - (1 << 32) if low >= 1 << 31 else low

