-- One row per running process that holds claims (docs/reliability.md): `id` is the owner part
-- of its claim tokens, `beats` counts its heartbeats (another process takes its claims over
-- once the count stood still for DING_CHANNEL_DEAD_AFTER_MS on that other process's clock),
-- `started_at` and `beat_at` are its own clock's Unix milliseconds, `host` and `pid` say where
-- it runs, for the log. A process that stops removes its row; a dead one's row goes when its
-- claims are taken over.
CREATE TABLE processes (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    beat_at BIGINT NOT NULL,
    beats BIGINT NOT NULL
);
