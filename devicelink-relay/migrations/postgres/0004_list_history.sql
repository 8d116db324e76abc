-- The recent device lists of each account (protocol v2.1): a companion that
-- missed versions while away, and that must chain them (it saw a fork),
-- asks for the versions after the one it holds (Subscribe's `after`). The
-- store keeps the last 64 versions (LIST_HISTORY) beside the record.
CREATE TABLE account_lists (
  account BYTEA NOT NULL,
  version BIGINT NOT NULL,
  list BYTEA NOT NULL,
  PRIMARY KEY (account, version)
);
-- Each account's current list starts its history: its version is the list's
-- bytes 33..41 (after the layout byte and the account key), big-endian.
INSERT INTO account_lists (account, version, list)
SELECT account, ('x' || encode(substring(list FROM 34 FOR 8), 'hex'))::bit(64)::bigint, list
  FROM accounts WHERE length(list) > 0;
