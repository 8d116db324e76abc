-- Many relay nodes on one database: who is alive, which node holds which
-- client's connection, and frames waiting for another node. All of it is
-- soft state (UNLOGGED: no WAL, emptied by a crash of PostgreSQL); every
-- node asserts it again whenever its listening connection (re)connects.
-- Liveness uses PostgreSQL's clock (now()), one clock for every node.

-- A node's lease: renewed every few seconds; a node whose lease passed is
-- dead, and what it registered no longer counts.
CREATE UNLOGGED TABLE relay_nodes (
  id bigint PRIMARY KEY,
  lease_until timestamptz NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE relay_node_ids;

-- "Client X is connected to node N" (the newest connection wins).
CREATE UNLOGGED TABLE relay_presence (
  client bytea PRIMARY KEY,
  node bigint NOT NULL,
  since timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX relay_presence_node ON relay_presence (node);

-- Frames for a client on another node that are too large for a NOTIFY
-- payload (a Grant or a device list near its maximum size).
CREATE UNLOGGED TABLE relay_mailbox (
  id bigserial PRIMARY KEY,
  node bigint NOT NULL,
  client bytea NOT NULL,
  frame bytea NOT NULL,
  queued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX relay_mailbox_node ON relay_mailbox (node, id);
