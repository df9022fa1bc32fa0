DROP TABLE dingtalk_calls;
DROP TABLE dingtalk_egress;
ALTER TABLE deliveries DROP COLUMN held_by;
