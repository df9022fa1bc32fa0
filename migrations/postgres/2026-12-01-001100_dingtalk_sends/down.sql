DROP TABLE dingtalk_sends;
