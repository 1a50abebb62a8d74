-- sendit-watcher schema, version 6: a watch root proves it is the file system it was (issue 19).

-- One row per root and host: the root's identity as this host first saw it (sendit_watcher/roots.py), and
-- whether it is lost here now (reason, since when). A root that is not itself (unmounted, another device, an
-- empty mount point, a worker host that cannot see it) never has a row removed, and its batches are not
-- claimed on that host until it is back. Device and inode are unsigned 64-bit numbers: numeric, not bigint.
-- A root lost at first sight has a row without an identity (device NULL).
CREATE TABLE root_identity (
    root text NOT NULL,
    host text NOT NULL,
    device numeric(20, 0),
    inode numeric(20, 0),
    mount_point boolean,
    fs_type text,
    fs_source text,
    fs_id numeric(20, 0),
    recorded_at timestamptz,
    lost_reason text,
    lost_since timestamptz,
    PRIMARY KEY (root, host),
    CHECK ((device IS NULL) = (inode IS NULL) AND (device IS NULL) = (mount_point IS NULL)),
    CHECK ((lost_reason IS NULL) = (lost_since IS NULL))
);
