-- The digest (SHA-256) of the Hello holding a reservation, so a release
-- names the Hello it refused and never cancels a newer reservation
-- (PROTOCOL.md §7.1). NULL unless state = 1. A reservation made before this
-- migration has no digest: no release matches it, and it lapses at its
-- state_at like any silent reservation.
ALTER TABLE tokens ADD COLUMN hello BLOB;
