-- Records change state many times a second and every change leaves a dead
-- row version and dead index entries behind until VACUUM removes them.
-- PostgreSQL's default waits for 20 % of a table to be dead; on a table of
-- millions of delivered records that is millions of dead entries in the
-- per-state index ranges that the console's counts and the listings read.
-- Vacuum these tables after 2 % instead (ANALYZE too, so the planner sees
-- the backlog as it is). SQLite removes index entries when a row changes,
-- so this file has no twin in the other dialect's directory.
ALTER TABLE records SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE attempts SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE events SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
