DROP TABLE directory_syncs;
ALTER TABLE users DROP COLUMN gone_since;
ALTER TABLE users DROP COLUMN bk_staff_status;
ALTER TABLE users DROP COLUMN bk_status;
