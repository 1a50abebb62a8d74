-- sendit-watcher schema, version 1.
-- Runs with search_path set to the configured schema; names are unqualified on purpose.

-- One row per folder seen under a watch root: the durable queue and the record of what was seen.
CREATE TABLE batch (
    id              bigserial PRIMARY KEY,
    root            text NOT NULL,            -- watch name from the conffile ('/' for folders outside any root)
    path            text NOT NULL,            -- folder path relative to the root
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'importing', 'done', 'empty', 'failed')),
    fingerprint     text,                     -- stat fingerprint (names, sizes, mtimes) at the last import
    files           integer NOT NULL DEFAULT 0,
    instances       integer NOT NULL DEFAULT 0,
    rejected        integer NOT NULL DEFAULT 0,
    new_instances   integer NOT NULL DEFAULT 0,  -- instances added by the last import
    imports         integer NOT NULL DEFAULT 0,  -- completed imports of this folder
    attempts        integer NOT NULL DEFAULT 0,  -- failed attempts since the last success
    queued_at       timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    seconds         double precision,
    host            text,
    last_error      text,
    UNIQUE (root, path)
);
CREATE INDEX batch_queued ON batch (id) WHERE status = 'queued';
CREATE INDEX batch_finished ON batch (finished_at);

CREATE TABLE patient (
    id                      bigserial PRIMARY KEY,
    patient_id              text NOT NULL,            -- (0010,0020), '' when absent
    issuer_of_patient_id    text NOT NULL,            -- (0010,0021), '' when absent
    patient_name            text,                     -- (0010,0010)
    patient_birth_date      date,                     -- (0010,0030)
    patient_sex             text,                     -- (0010,0040)
    UNIQUE (patient_id, issuer_of_patient_id)
);

CREATE TABLE study (
    id                      bigserial PRIMARY KEY,
    study_instance_uid      text NOT NULL UNIQUE,     -- (0020,000D)
    patient                 bigint NOT NULL REFERENCES patient,
    study_date              date,                     -- (0008,0020)
    study_time              text,                     -- (0008,0030)
    accession_number        text,                     -- (0008,0050)
    study_id                text,                     -- (0020,0010)
    study_description       text,                     -- (0008,1030)
    referring_physician_name text                     -- (0008,0090)
);
CREATE INDEX study_patient ON study (patient);

CREATE TABLE series (
    id                      bigserial PRIMARY KEY,
    series_instance_uid     text NOT NULL UNIQUE,     -- (0020,000E)
    study                   bigint NOT NULL REFERENCES study,
    modality                text,                     -- (0008,0060)
    series_number           integer,                  -- (0020,0011)
    series_date             date,                     -- (0008,0021)
    series_description      text,                     -- (0008,103E)
    body_part_examined      text                      -- (0018,0015)
);
CREATE INDEX series_study ON series (study);

CREATE TABLE instance (
    id                      bigserial PRIMARY KEY,
    sop_instance_uid        text NOT NULL UNIQUE,     -- (0008,0018)
    sop_class_uid           text,                     -- (0008,0016)
    series                  bigint NOT NULL REFERENCES series,
    instance_number         integer,                  -- (0020,0013)
    content_date            date,                     -- (0008,0023)
    transfer_syntax_uid     text,                     -- (0002,0010)
    batch                   bigint NOT NULL REFERENCES batch,
    path                    text NOT NULL,            -- file path relative to the batch folder
    size                    bigint NOT NULL,
    mtime_ns                bigint NOT NULL,
    header                  jsonb,                    -- DICOM JSON model (PS3.18 F.2), no bulk data
    imported_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (batch, path)
);
CREATE INDEX instance_series ON instance (series);

-- One row per file that is not an importable DICOM instance.
CREATE TABLE rejected_file (
    id                      bigserial PRIMARY KEY,
    batch                   bigint NOT NULL REFERENCES batch,
    path                    text NOT NULL,            -- relative to the batch folder
    size                    bigint,
    mtime_ns                bigint,
    reason                  text NOT NULL,            -- short class: not-dicom, duplicate, truncated, ...
    detail                  text NOT NULL DEFAULT '', -- what exactly was wrong
    duplicate_of            text,                     -- SOPInstanceUID the file duplicates (reason 'duplicate')
    rejected_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (batch, path)
);
