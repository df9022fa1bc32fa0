DROP TABLE robot_sends;
DROP TABLE delivery_attempts;
DROP TABLE deliveries;
DROP TABLE messages;
DROP TABLE dingtalk_userids;
DROP TABLE users;
DROP TABLE channels;
DROP TABLE apps;
