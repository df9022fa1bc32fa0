-- When DingTalk last throttled the robot (NULL: never, as far as this database knows), so
-- `doctor` can tell how long ago that was; `paused_until` only says when the pause ends.
ALTER TABLE robot_state ADD COLUMN throttled_at BIGINT;
