ALTER TABLE messages DROP COLUMN tenant_id;
