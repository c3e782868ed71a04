-- The scheduler's reads of the repeaters (the ready set, a fed domain's
-- repeaters, the wake-up time, the leases other holders have) need a few
-- short columns of each row, but every row also carries its spec, about
-- half a KiB of JSON. A scan in (domain, name) order went through the
-- unique index and then looked each row up in the table: with 10,000
-- repeaters, more than a thousand table pages per read, and SQLite drops
-- its cached pages whenever another connection has written, which the
-- writer does many times a second. This index holds what those reads ask
-- for, so they never open the table. A lease or backoff write changes one
-- entry of it. On PostgreSQL an index-only scan still visits every table
-- page changed since the last vacuum, and lease writes keep changing them,
-- so this file has no twin in the other dialect's directory.
CREATE INDEX repeaters_lanes ON repeaters
    (domain, name, paused, ordering, backoff_until, lease_expires_at, lease_holder);
