"""SQL files of jointembed_pg, installed as the package ``jointembed_pg.sql``.

* ``migrations/NNN_name.sql``: run-once schema migrations (tables, indexes), applied in
  order by :mod:`jointembed_pg.migrations` and recorded in ``jointembed.schema_version``.
* ``functions/NN_name.sql``: idempotent definitions (``CREATE OR REPLACE`` functions,
  comments, grants), re-applied on every upgrade whose files changed. A function whose
  signature or parameter names change must be dropped first in its file
  (``DROP FUNCTION IF EXISTS jointembed.f(old argument types);``).
* ``_bootstrap.sql``: extension, schema and bookkeeping tables (idempotent).
* ``queries.sql``: named query templates (``-- name: ...``) used by :mod:`jointembed_pg.search.store`.
"""
