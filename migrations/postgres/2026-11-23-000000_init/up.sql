-- Times are Unix milliseconds (BIGINT) on both backends: one representation, no time-zone traps.

CREATE TABLE apps (
    code        TEXT PRIMARY KEY NOT NULL,
    secret_hash TEXT NOT NULL,          -- "v1$<salt hex>$<hmac-sha256 hex>", never the secret
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE channels (
    name        TEXT PRIMARY KEY NOT NULL,
    path        TEXT NOT NULL UNIQUE,   -- e.g. /cmsi/send_ding/
    method      TEXT NOT NULL,          -- "GET", "POST" or "GET,POST"
    component   TEXT NOT NULL,
    label       TEXT NOT NULL,
    label_en    TEXT NOT NULL,
    timeout_s   INTEGER NOT NULL,
    is_active   BOOLEAN NOT NULL,
    is_hidden   BOOLEAN NOT NULL,
    comp_conf   TEXT NOT NULL DEFAULT '{}',  -- JSON object
    admin_set   TEXT NOT NULL DEFAULT '[]',  -- JSON array: comp_conf keys (and "is_active") an admin set; sync keeps them
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE users (
    username     TEXT PRIMARY KEY NOT NULL,
    display_name TEXT,
    telephone    TEXT,
    country_code TEXT NOT NULL DEFAULT '86',
    email        TEXT,
    wx_userid    TEXT,
    qq           TEXT,
    extras       TEXT NOT NULL DEFAULT '{}',
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- phone -> DingTalk userid, per app key; userid NULL caches "not found".
CREATE TABLE dingtalk_userids (
    app_key    TEXT NOT NULL,
    mobile     TEXT NOT NULL,
    userid     TEXT,
    fetched_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (app_key, mobile)
);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY NOT NULL,
    app_code        TEXT NOT NULL,
    idempotency_key TEXT,
    channel         TEXT NOT NULL,
    sender          TEXT,
    request_id      TEXT NOT NULL,
    body            TEXT NOT NULL,      -- JSON: the validated message (msg_key, title, content, ...)
    created_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX messages_idempotency ON messages (app_code, idempotency_key);
CREATE INDEX messages_created ON messages (created_at);

CREATE TABLE deliveries (
    id                 BIGSERIAL PRIMARY KEY,
    message_id         TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    receiver           TEXT NOT NULL,   -- what the caller named
    kind               TEXT NOT NULL,   -- 'user' | 'robot'
    target             TEXT NOT NULL,   -- robot username, or DingTalk userid / mobile
    status             TEXT NOT NULL,   -- 'queued' | 'sent' | 'failed'
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    BIGINT NOT NULL,
    give_up_at         BIGINT NOT NULL, -- still failing then: failed for good
    sent_at            BIGINT,
    parts_sent         INTEGER NOT NULL DEFAULT 0, -- of a message split into parts: how many went out
    claimed_until      BIGINT,
    claimed_by         TEXT,
    last_error         TEXT,
    dingtalk_code      TEXT,
    dingtalk_request_id TEXT,
    digest_id          TEXT,            -- the digest send that carried this delivery, if merged
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX deliveries_message ON deliveries (message_id);
-- Serves "due deliveries": status = 'queued' AND next_attempt_at <= now, oldest first.
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
-- Serves "everything waiting for this robot", merged into its next send.
CREATE INDEX deliveries_robot_backlog ON deliveries (target, status);

-- Every attempt of every delivery: the history `deliveries show` prints.
CREATE TABLE delivery_attempts (
    id          BIGSERIAL PRIMARY KEY,
    delivery_id BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          BIGINT NOT NULL,
    outcome     TEXT NOT NULL,          -- 'sent' | 'retry' | 'failed'
    code        TEXT,
    error       TEXT,
    dingtalk_request_id TEXT
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);

-- Per group robot: the pacing state shared by every process (GCRA "theoretical arrival
-- time" of the token bucket) and a pause DingTalk imposed by throttling it.
CREATE TABLE robot_state (
    robot        TEXT PRIMARY KEY NOT NULL,
    tat          BIGINT NOT NULL,
    paused_until BIGINT NOT NULL
);

-- Every webhook send, counted for the "never more than N per window" rule.
CREATE TABLE robot_sends (
    id          BIGSERIAL PRIMARY KEY,
    robot       TEXT NOT NULL,          -- robot username (never its token)
    sent_at     BIGINT NOT NULL,
    delivery_id BIGINT,
    parts       INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX robot_sends_window ON robot_sends (robot, sent_at);
