-- Budgets per network source (devicelink::relay::Budget), as SQLite's
-- migration 0005: each token row names the source it was registered from,
-- and every row (open, reserved or a redeemed tombstone) counts for its
-- client and its source until it is swept. Rows from before this migration
-- count for the all-zero source.
ALTER TABLE tokens ADD COLUMN source bytea NOT NULL
  DEFAULT '\x00000000000000000000000000000000'::bytea;
-- TokenStore::abandon deletes a departed client's rows.
CREATE INDEX tokens_client ON tokens (client);
CREATE TABLE sources (id bytea PRIMARY KEY, live bigint NOT NULL);
CREATE INDEX sources_idle ON sources (id) WHERE live = 0;
DELETE FROM clients;
INSERT INTO clients (id, live) SELECT client, count(*) FROM tokens GROUP BY client;
INSERT INTO sources (id, live) SELECT source, count(*) FROM tokens GROUP BY source;
-- Every account is due once its primary was inactive for the offline limit
-- (its companions are logged out; an account left with none is forgotten):
-- active_since is every row's last activity, the big-endian u64 at byte 57
-- of its facts (devicelink::relay::AccountFacts).
UPDATE accounts
   SET active_since = ('x' || encode(substring(facts FROM 58 FOR 8), 'hex'))::bit(64)::bigint
 WHERE active_since IS NULL;
