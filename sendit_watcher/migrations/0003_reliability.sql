-- sendit-watcher schema, version 3: the failure policy, the mirror, main-tag conflicts, patients without an ID.

-- A failed batch is not claimed again before next_attempt_at (exponential back-off); failed_fingerprint is the
-- folder as it was when it failed, so a catch-up scan queues it again only once it has changed.
ALTER TABLE batch ADD COLUMN next_attempt_at timestamptz;
ALTER TABLE batch ADD COLUMN failed_fingerprint text;

-- Each import mirrors the folder as it is now: rows of files that are gone are removed, and counted here.
ALTER TABLE batch ADD COLUMN removed integer NOT NULL DEFAULT 0;
-- A file is the same file when size, mtime and ctime agree: a rename over it (mv B A) changes the ctime even
-- when both files have one size and one mtime (clones unpacked from an archive).
ALTER TABLE instance ADD COLUMN ctime_ns bigint;
ALTER TABLE rejected_file ADD COLUMN ctime_ns bigint;

-- Instances without a PatientID get a patient row per study (study_key = its StudyInstanceUID), never one
-- patient shared by different people; study_key is '' for every patient with an ID.
ALTER TABLE patient ADD COLUMN study_key text NOT NULL DEFAULT '';
ALTER TABLE patient DROP CONSTRAINT patient_patient_id_issuer_of_patient_id_key;
ALTER TABLE patient ADD CONSTRAINT patient_key UNIQUE (patient_id, issuer_of_patient_id, study_key);

-- Files whose main tags disagree with the study or series row they were filed under (first writer wins):
-- which file, which level, which tag; never the values.
CREATE TABLE main_tag_conflict (
    id                  bigserial PRIMARY KEY,
    batch               bigint NOT NULL REFERENCES batch,
    path                text NOT NULL,            -- relative to the batch folder
    sop_instance_uid    text NOT NULL,
    level               text NOT NULL CHECK (level IN ('study', 'series')),
    tag                 text NOT NULL,            -- keyword and tag, e.g. 'PatientID (0010,0020)'
    stored_id           bigint NOT NULL,          -- the study or series row it disagrees with
    noticed_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (batch, path, tag)
);
