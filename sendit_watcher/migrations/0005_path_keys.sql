-- sendit-watcher schema, version 5: a file's path is a key whatever its length.

-- The (batch, path) unique constraints indexed the path itself, and a btree entry holds at most about 2,700
-- bytes: a file under long names that do not compress (a 3,500-byte path is legal on Linux, and an escaped
-- non-UTF-8 name is four times its bytes) failed its whole folder with SQLSTATE 54000. The unique indexes now
-- hold the SHA-256 of the path, a fixed 32 bytes. The database is UTF8 (sendit-watcher refuses any other), so
-- the path's UTF-8 bytes, and with them the function, depend on the path alone: IMMUTABLE holds.
CREATE FUNCTION path_key(path text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT pg_catalog.sha256(pg_catalog.convert_to(path, 'UTF8')) $$;

ALTER TABLE instance DROP CONSTRAINT instance_batch_path_key;
CREATE UNIQUE INDEX instance_batch_path_key ON instance (batch, path_key(path));
ALTER TABLE rejected_file DROP CONSTRAINT rejected_file_batch_path_key;
CREATE UNIQUE INDEX rejected_file_batch_path_key ON rejected_file (batch, path_key(path));
ALTER TABLE main_tag_conflict DROP CONSTRAINT main_tag_conflict_batch_path_tag_key;
CREATE UNIQUE INDEX main_tag_conflict_batch_path_tag_key ON main_tag_conflict (batch, path_key(path), tag);
