-- Templates that override the title and body of alerts and messages, by name: a webhook URL
-- (`?template=NAME`) or a channel's comp_conf `template` names one. Both are Jinja source
-- (checked when stored); updated_at is Unix milliseconds.
CREATE TABLE templates (
    name TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
