-- The work-notification task a delivery waits on: asyncsend_v2 answered `task_id` for the part
-- `part` (0-based) to `user_id` at `sent_at` (Unix milliseconds) under `agent_id`;
-- getsendresult says what became of it. A row exists only while the delivery waits for that answer.
CREATE TABLE work_notice_tasks (
    delivery_id BIGINT PRIMARY KEY NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    sent_at BIGINT NOT NULL
);
