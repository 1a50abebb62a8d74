-- sendit-watcher schema, version 10: a batch queued because its folder was deleted or moved away.

-- Such a batch is a removal: the worker that takes it removes the folder's rows and reads nothing, whatever is
-- on disk under that name by then (a folder created again under the name is a new folder: it settles and is
-- queued as one). It is held back for settle_seconds (next_attempt_at), so that a folder renamed away and back
-- within that time is queued again as the same folder (removal false again) and never removed.
ALTER TABLE batch ADD COLUMN removal boolean NOT NULL DEFAULT false;
