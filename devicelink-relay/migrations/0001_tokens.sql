-- Pairing tokens: the core's TokenStore contract (src/relay/ledger.rs).
-- Times are Unix milliseconds.
CREATE TABLE tokens (
  id BLOB PRIMARY KEY,
  client BLOB NOT NULL,
  expires_at INTEGER NOT NULL,
  keep_until INTEGER NOT NULL,
  state INTEGER NOT NULL,        -- 0 open, 1 reserved, 2 redeemed
  peer BLOB,                     -- reserving / redeeming primary
  state_at INTEGER               -- reserved until / redeemed at
) WITHOUT ROWID;
CREATE INDEX tokens_keep ON tokens (keep_until);
-- Open and reserved tokens per client (rows at zero are deleted).
CREATE TABLE clients (id BLOB PRIMARY KEY, live INTEGER NOT NULL) WITHOUT ROWID;
-- All rows of tokens.
CREATE TABLE totals (one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL);
INSERT INTO totals (one, n) VALUES (1, 0);
