-- 005: per-collection storage type of the embedding column (issue 17): 'vector'
-- (float32, the default and what every existing collection uses) or 'halfvec' (float16,
-- half the bytes, pgvector >= 0.7). HNSW indexes take at most 2000 dimensions of vector
-- and 4000 of halfvec (pgvector src/hnsw.h HNSW_MAX_DIM); jointembed.create_collection
-- refuses more with a message, and this constraint (NOT VALID: existing rows are not
-- re-checked) keeps direct inserts into the catalog honest.

ALTER TABLE jointembed.collections
    ADD COLUMN storage text NOT NULL DEFAULT 'vector' CHECK (storage IN ('vector', 'halfvec'));

ALTER TABLE jointembed.collections
    ADD CONSTRAINT collections_hnsw_dim
    CHECK (dim <= CASE storage WHEN 'halfvec' THEN 4000 ELSE 2000 END) NOT VALID;

COMMENT ON COLUMN jointembed.collections.storage IS
    'type of the items table''s embedding column: vector (float32) or halfvec (float16)';
