-- The recent device lists of each account (protocol v2.1): a companion that
-- missed versions while away, and that must chain them (it saw a fork),
-- asks for the versions after the one it holds (Subscribe's `after`). The
-- store keeps the last 64 versions (LIST_HISTORY) beside the record; an
-- account's current list seeds it.
CREATE TABLE account_lists (
  account BLOB NOT NULL,
  version INTEGER NOT NULL,
  list BLOB NOT NULL,
  PRIMARY KEY (account, version)
);
