ALTER TABLE robot_state DROP COLUMN throttled_at;
