-- Budgets per network source (devicelink::relay::Budget): each token row
-- names the source it was registered from (the relay's key of the client's
-- address), and every row, open, reserved or a redeemed tombstone, counts
-- for its client and its source until it is swept. Rows from before this
-- migration count for the all-zero source.
ALTER TABLE tokens ADD COLUMN source BLOB NOT NULL DEFAULT x'00000000000000000000000000000000';
-- TokenStore::abandon deletes a departed client's rows.
CREATE INDEX tokens_client ON tokens (client);
CREATE TABLE sources (id BLOB PRIMARY KEY, live INTEGER NOT NULL) WITHOUT ROWID;
DELETE FROM clients;
INSERT INTO clients (id, live) SELECT client, count(*) FROM tokens GROUP BY client;
INSERT INTO sources (id, live) SELECT source, count(*) FROM tokens GROUP BY source;
-- An account is due once its primary was inactive for the offline limit if
-- it has companions (they are logged out) or never had one (it is
-- forgotten), so active_since is those rows' last activity: the relay's data
-- step (store/sqlite.rs, `fill_active_since`) fills the rows of accounts
-- that never had a companion.
