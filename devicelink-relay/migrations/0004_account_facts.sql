-- Accounts as the core directory's facts (devicelink::relay::AccountFacts,
-- its own canonical encoding), with a revision for compare-and-set writes
-- and the primary's last activity while companions are linked (NULL when
-- none is), indexed for the sweep. The rows of the old table are converted
-- by the relay's code (store/sqlite.rs, `convert_accounts_v3`), which then
-- replaces the old table with this one.
CREATE TABLE accounts_v4 (
  account BLOB PRIMARY KEY,
  revision INTEGER NOT NULL,
  active_since INTEGER,
  facts BLOB NOT NULL,
  list BLOB NOT NULL
);
