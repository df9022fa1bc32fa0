-- What DingTalk holds back, for every process on the database: `scope` 'pause' (its gateway's
-- anti-abuse pause of every call) and 'quota' (the organisation's monthly API quota: the
-- app's calls), each until `until_ms`, with the code and message of the answer that started it;
-- `lifts`: how many times an admin lifted it (`dingtalk resume`), so every process sees a lift
-- whatever its clock says.
CREATE TABLE dingtalk_egress (
    scope      TEXT NOT NULL PRIMARY KEY,
    until_ms   BIGINT NOT NULL,
    code       TEXT NOT NULL,
    message    TEXT NOT NULL,
    lifts      BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

-- The hold ('pause', 'quota') a queued delivery waits for, so that lifting it makes due only
-- those.
ALTER TABLE deliveries ADD COLUMN held_by TEXT;

-- Calls DingTalk answered, per month as DingTalk counts them (Asia/Shanghai, `2026-12`) and
-- API, summed over every process.
CREATE TABLE dingtalk_calls (
    month TEXT NOT NULL,
    api   TEXT NOT NULL,
    calls BIGINT NOT NULL,
    PRIMARY KEY (month, api)
);
