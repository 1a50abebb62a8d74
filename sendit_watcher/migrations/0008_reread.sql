-- sendit-watcher schema, version 8: a folder to be read again while a worker holds its batch.

-- When an import frees duplicates (their original is gone), their folders must be read again. A folder whose
-- batch no worker holds is simply queued again; one that a worker holds right now cannot be touched without
-- waiting for that worker, which may itself be waiting for the mirror lock the freeing import holds (a
-- deadlock). Such a folder is recorded here instead: its importer reads it again under the mirror lock, and a
-- row that outlives it makes the batch claimable like a queued one. No foreign key on purpose: checking one
-- would lock the batch row, which is exactly the wait this table avoids.
CREATE TABLE reread (
    batch           bigint PRIMARY KEY,       -- batch.id
    requested_at    timestamptz NOT NULL DEFAULT now()
);
