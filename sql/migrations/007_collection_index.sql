-- 007: per-collection search index (issue 26): 'float' (HNSW on the embedding, L2; the
-- default and what every existing collection uses) or 'binary' (HNSW with bit_hamming_ops
-- on binary_quantize(embedding)::bit(D), pgvector >= 0.7; searches take a Hamming candidate
-- pool from it and re-rank the pool by exact L2 on the full vectors, jointembed.knn).
-- Set with jointembed.set_collection_index (refused with the reason on pgvector < 0.7).

ALTER TABLE jointembed.collections
    ADD COLUMN index_kind text NOT NULL DEFAULT 'float' CHECK (index_kind IN ('float', 'binary'));

COMMENT ON COLUMN jointembed.collections.index_kind IS
    'search index of the items table: float (HNSW, L2) or binary (HNSW on binary_quantize(embedding)::bit(D), '
    'Hamming candidates re-ranked by exact L2)';
