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
-- An account is due once its primary was inactive for the offline limit if
-- it has companions (they are logged out) or never had one (it is
-- forgotten): active_since is those rows' last activity, the big-endian u64
-- at byte 57 of its facts (devicelink::relay::AccountFacts). A row left
-- NULL by 0001 has no companion; it never had one if its flags (byte 69)
-- say neither expired nor linked once and its floor (bytes 65-68) is 0.
UPDATE accounts
   SET active_since = ('x' || encode(substring(facts FROM 58 FOR 8), 'hex'))::bit(64)::bigint
 WHERE active_since IS NULL AND get_byte(facts, 69) & 6 = 0
   AND substring(facts FROM 66 FOR 4) = '\x00000000'::bytea;
