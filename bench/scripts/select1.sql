-- The smallest transaction: with pgbench -C this measures connect + authenticate + SELECT 1 +
-- close.
SELECT 1;
