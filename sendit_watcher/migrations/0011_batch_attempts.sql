-- sendit-watcher schema, version 11: a worker that dies on one folder again and again (killed by the kernel's
-- OOM killer, say) fails that folder instead of dying on it forever.

-- One row per import of a batch that a worker started and has not ended: the worker inserts it, committed,
-- before it claims the batch; the batch's finish or recorded failure deletes its rows. When a worker process
-- dies, its supervisor sets `died` (how it ended) on the row of that host and pid; a claimer that finds
-- DEATHS_LIMIT such rows fails the batch. A clean stop or a lost connection never sets `died`.
CREATE TABLE batch_attempt (
    batch       bigint NOT NULL REFERENCES batch ON DELETE CASCADE,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    died        text,
    PRIMARY KEY (batch, host, pid)
);
CREATE INDEX batch_attempt_worker ON batch_attempt (host, pid) WHERE died IS NULL;
