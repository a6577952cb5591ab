-- Request ids belong to whoever sent them, at the service they sent them to: `scope` is the
-- service's ledger domain and the calling client (`shieldx.credits.v1 billing`), so another
-- client reusing an id never gets this answer, and services sharing one schema never refuse
-- each other's ids. Rows recorded before this migration keep the empty scope: nobody's.
ALTER TABLE request_ids ADD COLUMN scope TEXT NOT NULL DEFAULT '';
ALTER TABLE request_ids DROP CONSTRAINT request_ids_pkey;
ALTER TABLE request_ids ADD PRIMARY KEY (scope, request_id);
