-- Bearer tokens of the webhook sources (`ding-channel apps token CODE`): only the SHA-256 of
-- each token is kept, so a copy of the database does not let anyone call. Removing the app
-- removes its tokens.
CREATE TABLE app_tokens (
    token_hash   TEXT PRIMARY KEY NOT NULL,  -- SHA-256 hex of the whole token, never the token
    app_code     TEXT NOT NULL REFERENCES apps (code) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX app_tokens_app_code ON app_tokens (app_code);
