-- sendit-watcher schema, version 13: a host removes a folder's rows only when it has seen that folder itself.
-- Two hosts watching one share see the same folders only while the share is mounted on both and their caches
-- agree; a folder missing on one host is evidence of a deletion only if that host saw the folder before (its
-- catch-up listed it as it was recorded, its watcher queued it, or it imported it). `seen_on` holds the hosts
-- that have; an import that finds no file (the folder gone) clears it. Rows of earlier versions: the host of
-- their last import saw them.
ALTER TABLE batch ADD COLUMN seen_on text[] NOT NULL DEFAULT '{}';
UPDATE batch SET seen_on = ARRAY[host] WHERE host IS NOT NULL AND files > 0;

-- A root has shown a host that it is the share the other hosts see when it holds a folder, with its files exactly
-- as another host imported it (or the operator adopted it): only then does that host read a folder other hosts
-- saw, remove one it never saw, or carry out another host's removal. Its own imports prove nothing of the kind.
ALTER TABLE root_identity ADD COLUMN shared boolean NOT NULL DEFAULT false;
