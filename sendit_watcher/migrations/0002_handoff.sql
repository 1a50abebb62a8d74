-- sendit-watcher schema, version 2: hand-off in commit order, and throughput per batch.

-- Every finished batch (done, empty, failed; not an unchanged re-check) takes the next number, in commit order
-- (the finishing step holds an advisory lock until commit), so `listen --since N` misses nothing.
CREATE SEQUENCE batch_finished_seq;
ALTER TABLE batch ADD COLUMN finished_seq bigint;
CREATE UNIQUE INDEX batch_finished_seq_key ON batch (finished_seq);

ALTER TABLE batch ADD COLUMN files_per_second double precision
    GENERATED ALWAYS AS (CASE WHEN seconds > 0 THEN files / seconds END) STORED;
