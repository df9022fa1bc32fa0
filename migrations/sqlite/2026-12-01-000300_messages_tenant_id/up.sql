-- The BlueKing tenant (X-Bk-Tenant-Id) a message was sent for, on multi-tenant platforms;
-- none for single-tenant callers and for messages from before this column.
ALTER TABLE messages ADD COLUMN tenant_id TEXT;
