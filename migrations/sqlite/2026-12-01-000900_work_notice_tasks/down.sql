DROP TABLE work_notice_tasks;
