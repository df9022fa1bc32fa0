DROP TABLE dingtalk_calls;
DROP TABLE dingtalk_egress;
