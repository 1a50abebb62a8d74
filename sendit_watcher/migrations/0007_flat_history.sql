-- sendit-watcher schema, version 7: what the catch-up scan, `status` and `metrics` cost does not grow with the
-- number of folders imported and deleted since (a batch row stays for every folder ever seen).

-- The catch-up scan reads the rows of the folders it lists, and of the rest only those that may have to be
-- reported gone: not queued, and with files at their last import (a folder whose removal was imported has the
-- fingerprint of no file, '0:...'). catchup.py's query repeats this predicate word for word, with literals, so
-- that the planner uses this index; rows of deleted folders are not in it.
CREATE INDEX batch_may_be_gone ON batch (root)
    WHERE status <> 'queued'
      AND coalesce(CASE WHEN status = 'failed' THEN failed_fingerprint ELSE fingerprint END, '0:') NOT LIKE '0:%';

-- `status` lists the most recent batches: newest first by this key, without sorting the whole table.
CREATE INDEX batch_recent ON batch ((coalesce(finished_at, queued_at)) DESC, id DESC);

-- Batch counts and sums by status and host, for `status`, `metrics` and the service's STATUS=: every change
-- to batch adds its difference here (statement triggers; inserts only, so writers never wait for each other),
-- and each worker, after its batch, folds the differences into one row per (status, host) in one transaction
-- (batches.fold_tally). The sums over this table equal the sums over batch in every snapshot.
CREATE TABLE batch_tally (
    status      text NOT NULL,
    host        text NOT NULL,              -- '' for a batch no host has handled yet
    batches     bigint NOT NULL,
    files       bigint NOT NULL,
    instances   bigint NOT NULL,
    rejected    bigint NOT NULL,
    seconds     double precision NOT NULL,
    attempts    bigint NOT NULL
);

CREATE FUNCTION batch_tally_insert() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO batch_tally
    SELECT status, coalesce(host, ''), count(*), sum(files), sum(instances), sum(rejected),
           coalesce(sum(seconds), 0), sum(attempts)
    FROM added GROUP BY 1, 2;
    RETURN NULL;
END
$$;

CREATE FUNCTION batch_tally_delete() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO batch_tally
    SELECT status, coalesce(host, ''), -count(*), -sum(files), -sum(instances), -sum(rejected),
           -coalesce(sum(seconds), 0), -sum(attempts)
    FROM removed GROUP BY 1, 2;
    RETURN NULL;
END
$$;

-- An update that changes nothing counted (a queued_at, a fingerprint) adds nothing.
CREATE FUNCTION batch_tally_update() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO batch_tally
    SELECT status, host, sum(batches), sum(files), sum(instances), sum(rejected), sum(seconds), sum(attempts)
    FROM (SELECT status, coalesce(host, '') AS host, 1 AS batches, files, instances, rejected,
                 coalesce(seconds, 0) AS seconds, attempts FROM added
          UNION ALL
          SELECT status, coalesce(host, ''), -1, -files, -instances, -rejected, -coalesce(seconds, 0), -attempts
          FROM removed) AS change
    GROUP BY 1, 2
    HAVING sum(batches) <> 0 OR sum(files) <> 0 OR sum(instances) <> 0 OR sum(rejected) <> 0
        OR sum(seconds) <> 0 OR sum(attempts) <> 0;
    RETURN NULL;
END
$$;

-- No write may fall between the triggers' creation and the first tally (old versions on other hosts keep
-- writing during an upgrade; their changes are counted by the triggers from here on).
LOCK TABLE batch IN SHARE ROW EXCLUSIVE MODE;
CREATE TRIGGER batch_tally_insert AFTER INSERT ON batch REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION batch_tally_insert();
CREATE TRIGGER batch_tally_delete AFTER DELETE ON batch REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION batch_tally_delete();
CREATE TRIGGER batch_tally_update AFTER UPDATE ON batch REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION batch_tally_update();
INSERT INTO batch_tally
SELECT status, coalesce(host, ''), count(*), sum(files), sum(instances), sum(rejected), coalesce(sum(seconds), 0),
       sum(attempts)
FROM batch GROUP BY 1, 2;
