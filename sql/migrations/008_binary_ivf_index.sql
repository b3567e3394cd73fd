-- 008: a third search index kind (issue 26, item 4): 'binary-ivf', an IVFFlat index with
-- bit_hamming_ops on binary_quantize(embedding)::bit(D) (pgvector >= 0.7). Its size is
-- about the codes themselves (no neighbour lists, unlike the bit HNSW of 'binary'); searches
-- probe enough lists for the Hamming candidate pool and re-rank the pool by exact L2
-- (jointembed.knn, sql/functions/16_binary_index.sql).

ALTER TABLE jointembed.collections DROP CONSTRAINT IF EXISTS collections_index_kind_check;
ALTER TABLE jointembed.collections
    ADD CONSTRAINT collections_index_kind_check CHECK (index_kind IN ('float', 'binary', 'binary-ivf'));

COMMENT ON COLUMN jointembed.collections.index_kind IS
    'search index of the items table: float (HNSW, L2), binary (HNSW on binary_quantize(embedding)::bit(D)) or '
    'binary-ivf (IVFFlat on the same bits); binary kinds re-rank Hamming candidates by exact L2';
