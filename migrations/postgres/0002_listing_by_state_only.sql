-- Record listings read only the per-state indexes (records_domain_state,
-- records_repeater_state): a page over every state merges one index range
-- per state (see records_page_sql in host/src/store/rows.rs). The two
-- indexes without the state cost every ingest two more index inserts and
-- served nothing else; ADR 10 has the measurements. Keep this file in
-- step with its twin in the other dialect's directory.
DROP INDEX records_domain;
DROP INDEX records_repeater;
