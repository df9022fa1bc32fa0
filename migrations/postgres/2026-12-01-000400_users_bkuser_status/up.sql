-- What bk-user says of each account (its `status` and `staff_status`, NULL for profiles of
-- other sources), and since when a sync no longer finds a user bk-user listed before: kept,
-- so that a send to it says why it is refused.
ALTER TABLE users ADD COLUMN bk_status TEXT;
ALTER TABLE users ADD COLUMN bk_staff_status TEXT;
ALTER TABLE users ADD COLUMN gone_since BIGINT;
-- One row per periodic directory sync: whoever moves next_sync_at forward runs it, so several
-- processes on one database sync once per interval.
CREATE TABLE directory_syncs (
    provider TEXT PRIMARY KEY NOT NULL,
    next_sync_at BIGINT NOT NULL
);
