DROP TABLE app_tokens;
