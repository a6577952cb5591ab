-- Reverts 0003_request_scope.postgres.sql (`shieldx migrate down`): ids are unscoped again, so of
-- answers sharing a request id across scopes only one (the lowest scope) can stay.
DELETE FROM request_ids a USING request_ids b WHERE a.request_id = b.request_id AND a.scope > b.scope;
ALTER TABLE request_ids DROP CONSTRAINT request_ids_pkey;
ALTER TABLE request_ids ADD PRIMARY KEY (request_id);
ALTER TABLE request_ids DROP COLUMN scope;
