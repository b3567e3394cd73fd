-- Binary-code search index of a collection (issue 26, migrations/007_collection_index.sql).
--
-- A collection with index_kind = 'binary' has, per modality, an HNSW index
--   ((binary_quantize(embedding)::bit(D)) bit_hamming_ops) WHERE modality = ...
-- (built by jointembed_pg.search.indexing, like the float index). jointembed.knn then takes
-- the jointembed._knn_binary_pool(k) rows nearest in Hamming distance from it and returns
-- the k of them nearest in exact L2 on the full vectors (pgvector's README pattern:
-- binary quantization + re-ranking), exactly k rows as for the float index.

-- True when the installed pgvector has binary_quantize and bit_hamming_ops (>= 0.7).
CREATE OR REPLACE FUNCTION jointembed._vector_binary_index()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
    SELECT coalesce((SELECT string_to_array(substring(e.extversion FROM '^[0-9]+\.[0-9]+'), '.')::int[]
                     FROM pg_catalog.pg_extension e WHERE e.extname = 'vector') >= ARRAY[0, 7], false)
$fn$;

-- Hamming candidates re-ranked per query: max(40 k, 400), at most 10000. On the Flickr8K
-- 1K galleries the top 100 already re-rank to the float result (docs/RESULTS.md, issue 26),
-- but at 100,000 rows grown from real embeddings a pool of 100 finds 0.74 of the exact top
-- 10 and 400 finds 0.93, about the float index at ef_search 40 (docs/BENCHMARKS.md).
CREATE OR REPLACE FUNCTION jointembed._knn_binary_pool(p_k integer)
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
    SELECT least(greatest(p_k::bigint * 40, 400), 10000)::integer
$fn$;

-- True when p_rel is the items table of a collection whose index_kind is 'binary'.
CREATE OR REPLACE FUNCTION jointembed._knn_binary(p_rel regclass)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
    SELECT EXISTS (SELECT 1 FROM jointembed.collections t
                   JOIN pg_catalog.pg_class c ON c.relname = t.items_table
                   WHERE c.oid = p_rel AND c.relnamespace = 'jointembed'::regnamespace
                     AND t.index_kind = 'binary')
$fn$;

-- Set the search index of collection p_name ('float' or 'binary'); returns its row.
-- 'binary' needs pgvector >= 0.7 (binary_quantize, bit_hamming_ops): refused otherwise,
-- with the reason. Existing indexes are not touched: build the new kind's with
-- `jointembed index ...` / Collection.ensure_index (the old kind's index stays until dropped).
CREATE OR REPLACE FUNCTION jointembed.set_collection_index(p_name text, p_index text)
RETURNS jointembed.collections
LANGUAGE plpgsql
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    c jointembed.collections;
BEGIN
    IF p_index IS NULL OR p_index NOT IN ('float', 'binary') THEN
        RAISE EXCEPTION 'jointembed: index must be float or binary, got %', quote_nullable(p_index)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_index = 'binary' AND NOT jointembed._vector_binary_index() THEN
        RAISE EXCEPTION 'jointembed: index binary needs pgvector >= 0.7.0 (binary_quantize and bit_hamming_ops); '
                        'this server has pgvector %',
            coalesce((SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'vector'), 'none')
            USING ERRCODE = 'feature_not_supported';
    END IF;
    UPDATE jointembed.collections t SET index_kind = p_index WHERE t.name = p_name RETURNING t.* INTO c;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'jointembed: no collection named %', quote_literal(p_name) USING ERRCODE = 'undefined_object';
    END IF;
    RETURN c;
END
$fn$;

COMMENT ON FUNCTION jointembed.set_collection_index(text, text) IS
    'set a collection''s search index: float (HNSW, L2) or binary (Hamming HNSW on binary_quantize, '
    're-ranked by exact L2; pgvector >= 0.7)';
