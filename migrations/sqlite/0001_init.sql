-- repeaterd schema, SQLite flavour. Times are milliseconds since the Unix
-- epoch (INTEGER). Record states: 0 pending, 1 retrying, 2 succeeded,
-- 3 rejected, 4 empty, 5 cancelled. Keep this file in step with
-- migrations/postgres/0001_init.sql.

-- AUTOINCREMENT: a deleted repeater's id must never be handed to a new one,
-- because its records keep pointing at it.
CREATE TABLE repeaters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    domain           TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    spec             TEXT    NOT NULL,
    -- 0 none, 1 fifo, 2 key: the claim and readiness rules differ by it.
    ordering         INTEGER NOT NULL DEFAULT 0,
    paused           BOOLEAN NOT NULL DEFAULT 0,
    backoff_until    INTEGER,
    backoff_step     INTEGER NOT NULL DEFAULT 0,
    lease_holder     TEXT,
    lease_token      TEXT,
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER,
    last_error       TEXT,
    last_success_at  INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (domain, name)
);

CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    domain       TEXT    NOT NULL,
    event_key    TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    ordering_key TEXT,
    created_at   INTEGER NOT NULL,
    UNIQUE (domain, event_key)
);

-- AUTOINCREMENT: record ids are the idempotency keys receivers see, so an id
-- is never reused, not even after retention deleted the record.
-- repeater_id has no foreign key: a deleted repeater's cancelled records stay
-- listed under repeater_name until retention removes them.
CREATE TABLE records (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        INTEGER NOT NULL REFERENCES events (id),
    repeater_id     INTEGER NOT NULL,
    repeater_name   TEXT    NOT NULL,
    domain          TEXT    NOT NULL,
    state           INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    age_origin      INTEGER NOT NULL,
    next_attempt_at INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT,
    ordering_key    TEXT
);

-- The ready set: the only index the scheduler's hot queries read.
CREATE INDEX records_ready ON records (repeater_id, next_attempt_at, id) WHERE state IN (0, 1);
-- Key ordering: is there an earlier unfinished record with the same key?
CREATE INDEX records_ready_key ON records (repeater_id, ordering_key, id)
    WHERE state IN (0, 1) AND ordering_key IS NOT NULL;
-- Retention walks terminal records by age.
CREATE INDEX records_terminal ON records (updated_at) WHERE state >= 2;
-- Listing with keyset pagination by id.
CREATE INDEX records_domain ON records (domain, id);
CREATE INDEX records_domain_state ON records (domain, state, id);
CREATE INDEX records_repeater ON records (repeater_id, id);
CREATE INDEX records_repeater_state ON records (repeater_id, state, id);
-- Idempotent ingest answers and orphaned-event cleanup.
CREATE INDEX records_event ON records (event_id);

CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY,
    record_id        INTEGER NOT NULL REFERENCES records (id),
    started_at       INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    status           INTEGER,
    error            TEXT,
    outcome          INTEGER NOT NULL,
    response_excerpt BLOB
);

CREATE INDEX attempts_record ON attempts (record_id, id);
