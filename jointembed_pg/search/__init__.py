"""Collections in PostgreSQL: Store/Collection, k-NN queries, HNSW index builds, SQLAlchemy."""
