-- What DingTalk holds back, for every process on the database: `scope` 'pause' (its gateway's
-- anti-abuse pause of every call) and 'quota' (the organisation's monthly API quota: the
-- app's calls), each until `until_ms`, with the code and message of the answer that started it.
CREATE TABLE dingtalk_egress (
    scope      TEXT PRIMARY KEY,
    until_ms   BIGINT NOT NULL,
    code       TEXT NOT NULL,
    message    TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Calls DingTalk answered, per month as DingTalk counts them (Asia/Shanghai, `2026-12`) and
-- API, summed over every process.
CREATE TABLE dingtalk_calls (
    month TEXT NOT NULL,
    api   TEXT NOT NULL,
    calls BIGINT NOT NULL,
    PRIMARY KEY (month, api)
);
