-- Each DingTalk send that reached a person, by the key DingTalk answered for it (`path`
-- 'oto': the app robot's batchSend processQueryKey; a message in parts has one per part): what
-- read status and recall ask DingTalk about. A person seen to have read it stays read; a
-- recall is recorded on the sends it removed.
CREATE TABLE dingtalk_sends (
    delivery_id BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    send_key    TEXT NOT NULL,
    path        TEXT NOT NULL,
    user_id     TEXT NOT NULL,   -- the DingTalk userid it reached
    sent_at     BIGINT NOT NULL,
    read_at     BIGINT,
    recalled_at BIGINT,
    PRIMARY KEY (delivery_id, send_key)
);
