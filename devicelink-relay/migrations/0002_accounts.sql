-- Each account's newest applied device list (wire bytes, signed), the
-- primary's last activity (Unix milliseconds) and the highest device index
-- logged out for primary inactivity.
CREATE TABLE accounts (
  account BLOB PRIMARY KEY,
  list_version INTEGER NOT NULL,
  list_hash BLOB NOT NULL,
  list BLOB NOT NULL,
  last_activity INTEGER NOT NULL,
  swept_up_to INTEGER NOT NULL DEFAULT 0
);
-- (A rowid table: list rows reach 15 KB, too large for WITHOUT ROWID.)
