-- 002: no schema objects. The search functions it once created are definitions now
-- (sql/functions/20_search.sql), re-applied on every upgrade.
SELECT 1;
