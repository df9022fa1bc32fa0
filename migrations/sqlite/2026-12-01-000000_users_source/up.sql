-- Which directory provider last wrote each profile (file import, sandbox, later bk-user or
-- DingTalk sync). Profiles from before this column came from file imports.
ALTER TABLE users ADD COLUMN source TEXT NOT NULL DEFAULT 'file';
