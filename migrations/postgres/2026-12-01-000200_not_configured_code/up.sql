-- Answers decide "single chat is not configured" from the delivery's code, no longer from its
-- text: give the failures recorded before that the code.
UPDATE deliveries SET dingtalk_code = 'not_configured'
WHERE dingtalk_code IS NULL AND status = 'failed' AND last_error LIKE 'single chat is not configured:%';
