-- Every attempt records the sha256 (hex) of the plugin version that built
-- its request, so a record's detail shows which version sent what while
-- versions roll out repeater by repeater (ADR 14). Attempts stored before
-- this migration have none. Keep this file in step with its twin in the
-- other dialect's directory.
ALTER TABLE attempts ADD COLUMN plugin_sha256 TEXT;
