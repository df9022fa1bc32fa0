-- Every robot send is one message: the count of parts was always 1.
ALTER TABLE robot_sends DROP COLUMN parts;
