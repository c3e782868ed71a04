-- Every attempt keeps a summary of what it sent (method, URL, headers,
-- body size) as JSON text, redacted by the host before it is stored, so a
-- record's detail shows what went out without a credential in it. Attempts
-- stored before this migration have none. Keep this file in step with its
-- twin in the other dialect's directory.
ALTER TABLE attempts ADD COLUMN request TEXT;
