"""The embedded PostgreSQL + pgvector used when no DSN is given."""
