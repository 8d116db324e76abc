-- The PostgreSQL schema of the relay's durable state: the same rows as the
-- SQLite schema (migrations/0001..0003), in PostgreSQL types. Times are Unix
-- milliseconds of the relay's clock (never PostgreSQL's).

-- Pairing tokens: the core's TokenStore contract (src/relay/ledger.rs).
CREATE TABLE tokens (
  id bytea PRIMARY KEY,
  client bytea NOT NULL,
  expires_at bigint NOT NULL,
  keep_until bigint NOT NULL,
  state smallint NOT NULL,       -- 0 open, 1 reserved, 2 redeemed
  peer bytea,                    -- reserving / redeeming primary
  state_at bigint,               -- reserved until / redeemed at
  hello bytea                    -- the reserving Hello's SHA-256 (state = 1)
);
-- Sweeps delete in keep_until order and touch only what expired.
CREATE INDEX tokens_keep ON tokens (keep_until, id);

-- Open and reserved tokens per client. Rows that reach zero are deleted by
-- the sweep (through the partial index), not by the write that zeroed them.
CREATE TABLE clients (id bytea PRIMARY KEY, live bigint NOT NULL);
CREATE INDEX clients_idle ON clients (id) WHERE live = 0;

-- All rows of tokens (the store-wide quota), as the sum of 64 shards: a
-- registration adds to the shard of its token id, so registrations on
-- many nodes do not queue on one row lock for the length of a commit
-- (fsync). Shards may go negative (sweeps subtract from shard 0); only
-- the sum counts.
CREATE TABLE totals (shard smallint PRIMARY KEY CHECK (shard >= 0 AND shard < 64), n bigint NOT NULL);
INSERT INTO totals (shard, n) SELECT s, 0 FROM generate_series(0, 63) AS s;

-- Accounts as the core directory's facts (devicelink::relay::AccountFacts,
-- its own canonical encoding) with the newest applied device list (wire
-- bytes, signed), a revision for compare-and-set writes, and the primary's
-- last activity while companions are linked (NULL when none is), indexed
-- for the sweep (the same rows as SQLite's migration 0004).
CREATE TABLE accounts (
  account bytea PRIMARY KEY,
  revision bigint NOT NULL,
  active_since bigint,
  facts bytea NOT NULL,
  list bytea NOT NULL
);
CREATE INDEX accounts_due ON accounts (active_since) WHERE active_since IS NOT NULL;
