-- repeaterd schema, PostgreSQL flavour. Times are milliseconds since the Unix
-- epoch (BIGINT). Record states: 0 pending, 1 retrying, 2 succeeded,
-- 3 rejected, 4 empty, 5 cancelled. Keep this file in step with
-- migrations/sqlite/0001_init.sql.

-- Identity ids are never reused, so a deleted repeater's records never point
-- at a new repeater.
CREATE TABLE repeaters (
    id               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain           TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    spec             TEXT    NOT NULL,
    -- 0 none, 1 fifo, 2 key: the claim and readiness rules differ by it.
    ordering         SMALLINT NOT NULL DEFAULT 0,
    paused           BOOLEAN NOT NULL DEFAULT FALSE,
    backoff_until    BIGINT,
    backoff_step     INTEGER NOT NULL DEFAULT 0,
    lease_holder     TEXT,
    lease_token      TEXT,
    lease_epoch      BIGINT  NOT NULL DEFAULT 0,
    lease_expires_at BIGINT,
    last_error       TEXT,
    last_success_at  BIGINT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    UNIQUE (domain, name)
);

CREATE TABLE events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain       TEXT   NOT NULL,
    event_key    TEXT   NOT NULL,
    event_type   TEXT   NOT NULL,
    content_type TEXT   NOT NULL,
    payload      BYTEA  NOT NULL,
    ordering_key TEXT,
    created_at   BIGINT NOT NULL,
    UNIQUE (domain, event_key)
);

-- Record ids are the idempotency keys receivers see; identity ids are never
-- reused. repeater_id has no foreign key: a deleted repeater's cancelled
-- records stay listed under repeater_name until retention removes them.
CREATE TABLE records (
    id              BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        BIGINT   NOT NULL REFERENCES events (id),
    repeater_id     BIGINT   NOT NULL,
    repeater_name   TEXT     NOT NULL,
    domain          TEXT     NOT NULL,
    state           SMALLINT NOT NULL,
    attempts        INTEGER  NOT NULL DEFAULT 0,
    age_origin      BIGINT   NOT NULL,
    next_attempt_at BIGINT,
    created_at      BIGINT   NOT NULL,
    updated_at      BIGINT   NOT NULL,
    last_error      TEXT,
    ordering_key    TEXT
);

-- The ready set: the only index the scheduler's hot queries read. Queries
-- spell the predicate literally (state IN (0, 1)) so the planner matches it.
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
    id               BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id        BIGINT   NOT NULL REFERENCES records (id),
    started_at       BIGINT   NOT NULL,
    duration_ms      BIGINT   NOT NULL,
    status           INTEGER,
    error            TEXT,
    outcome          SMALLINT NOT NULL,
    response_excerpt BYTEA
);

CREATE INDEX attempts_record ON attempts (record_id, id);
