-- sendit-watcher schema, version 12: a host infers nothing from what its root lacks until the root has shown it
-- a folder the database knows (roots.py): a host that first saw its root before anything was imported there (its
-- share not mounted yet, an empty plain directory) would otherwise report every folder the other hosts import as
-- gone. Proven by a catch-up scan that lists a known folder, a root check that finds one of the folders imported
-- last, an import of one of its folders on that host, or adopt-root.
ALTER TABLE root_identity ADD COLUMN proven boolean NOT NULL DEFAULT false;
