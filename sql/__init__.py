"""SQL files of jointembed_pg, installed as the package ``jointembed_pg.sql``.

``NNN_name.sql``: versioned migrations applied in order by :mod:`jointembed_pg.migrations`.
``queries.sql``: named query templates (``-- name: ...``) used by :mod:`jointembed_pg.store`.
"""
