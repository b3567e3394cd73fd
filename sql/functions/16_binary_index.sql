-- Binary-code search index of a collection (issue 26, migrations/007_collection_index.sql).
--
-- A collection with index_kind = 'binary' has, per modality, an HNSW index
--   ((binary_quantize(embedding)::bit(D)) bit_hamming_ops) WHERE modality = ...
-- (built by jointembed_pg.search.indexing, like the float index). jointembed.knn then takes
-- the jointembed._knn_binary_pool(k) rows nearest in Hamming distance from it and returns
-- the k of them nearest in exact L2 on the full vectors (pgvector's README pattern:
-- binary quantization + re-ranking), exactly k rows as for the float index.
--
-- index_kind = 'binary-ivf' (migrations/008_binary_ivf_index.sql): the same bits in an IVFFlat
-- index (USING ivfflat ... bit_hamming_ops WITH (lists = L), L = jointembed_pg.search.indexing.ivf_lists:
-- rows / 1000, at least 1, sqrt(rows) above 1M rows), named <items_table>_<modality>_bit_ivf.
-- Per query jointembed.knn takes a pool of jointembed._knn_ivf_pool(k) Hamming candidates
-- with ivfflat.probes = jointembed._knn_ivf_probes(L, rows, pool); pgvector >= 0.8 scans on (iterative scan)
-- while fewer than pool rows came back, older versions retry with 4x the probes.

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

-- Index kind of the collection whose items table is p_rel ('float', 'binary', 'binary-ivf');
-- NULL when p_rel is no collection's items table (an attached side table, a user table).
CREATE OR REPLACE FUNCTION jointembed._knn_index_kind(p_rel regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
    SELECT t.index_kind FROM jointembed.collections t
    JOIN pg_catalog.pg_class c ON c.relname = t.items_table
    WHERE c.oid = p_rel AND c.relnamespace = 'jointembed'::regnamespace
$fn$;

-- True when p_rel is the items table of a collection with a binary index (HNSW or IVFFlat).
CREATE OR REPLACE FUNCTION jointembed._knn_binary(p_rel regclass)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
    SELECT coalesce(jointembed._knn_index_kind(p_rel) IN ('binary', 'binary-ivf'), false)
$fn$;

-- (lists, rows) of the valid IVFFlat bit index of modality p_modality on p_rel
-- (<table>_<modality>_bit_ivf, in the table's schema): lists from its reloptions (pgvector's
-- default 100 when not given), rows = its reltuples as of the build or the last VACUUM /
-- ANALYZE (at least 1). No row when there is no such valid index.
CREATE OR REPLACE FUNCTION jointembed._knn_ivf_index(p_rel regclass, p_modality text,
                                                     OUT lists integer, OUT n_rows float8)
RETURNS record
LANGUAGE sql STABLE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
    SELECT coalesce((SELECT substring(o FROM '^lists=([0-9]+)$')::integer
                     FROM pg_catalog.unnest(ic.reloptions) o WHERE o LIKE 'lists=%' LIMIT 1), 100),
           greatest(ic.reltuples::float8, 1)
    FROM pg_catalog.pg_class tc
    JOIN pg_catalog.pg_class ic ON ic.relnamespace = tc.relnamespace
                               AND ic.relname = tc.relname || '_' || p_modality || '_bit_ivf'
    JOIN pg_catalog.pg_index x ON x.indexrelid = ic.oid AND x.indrelid = tc.oid AND x.indisvalid
    JOIN pg_catalog.pg_am am ON am.oid = ic.relam AND am.amname = 'ivfflat'
    WHERE tc.oid = p_rel
$fn$;

-- Hamming candidates re-ranked per query with the IVFFlat bit index: max(100 k, 1000), at
-- most 10000. Chosen on dev captions at 100,000 rows grown from real embeddings (docs/
-- BENCHMARKS.md, "binary-ivf"): with the probes below a pool of 400 found 0.949 of the exact
-- top 10, 1000 found 0.976 (the exact Hamming top 400 itself holds only 0.96: the pool, not
-- the probes, caps recall there). The probes cost the same for any pool; each pooled row
-- costs one heap fetch and one L2 distance.
CREATE OR REPLACE FUNCTION jointembed._knn_ivf_pool(p_k integer)
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
    SELECT least(greatest(p_k::bigint * 100, 1000), 10000)::integer
$fn$;

-- ivfflat.probes for a Hamming pool of p_pool rows from an IVFFlat index of p_lists lists
-- over p_rows rows: ceil(2 * lists^0.6), at least 8, at least the lists that hold twice the
-- pool on average (2 * pool * lists / rows), at most all the lists. Chosen on dev captions
-- at 100,000 rows (docs/BENCHMARKS.md, "binary-ivf"): recall@10 0.95-0.98 needed 32 of 100
-- lists and 64 of 316 (k-means cells on sign bits are coarse for caption queries, which lie
-- far from every image), i.e. probes growing as lists^0.6; 2 * lists^0.6 fits both.
CREATE OR REPLACE FUNCTION jointembed._knn_ivf_probes(p_lists integer, p_rows float8, p_pool integer)
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
    SELECT least(greatest(ceil(2 * power(greatest(p_lists, 1)::float8, 0.6))::bigint,
                          ceil(2 * p_pool::float8 * p_lists / greatest(p_rows, 1))::bigint, 8),
                 greatest(p_lists, 1))::integer
$fn$;

-- Set the search index of collection p_name ('float', 'binary' or 'binary-ivf'); returns its row.
-- 'binary' and 'binary-ivf' need pgvector >= 0.7 (binary_quantize, bit_hamming_ops): refused otherwise,
-- with the reason. Existing indexes are not touched: build the new kind's with
-- `jointembed index ...` / Collection.ensure_index (the old kind's index stays until dropped).
CREATE OR REPLACE FUNCTION jointembed.set_collection_index(p_name text, p_index text)
RETURNS jointembed.collections
LANGUAGE plpgsql
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    c jointembed.collections;
BEGIN
    IF p_index IS NULL OR p_index NOT IN ('float', 'binary', 'binary-ivf') THEN
        RAISE EXCEPTION 'jointembed: index must be float, binary or binary-ivf, got %', quote_nullable(p_index)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_index <> 'float' AND NOT jointembed._vector_binary_index() THEN
        RAISE EXCEPTION 'jointembed: index % needs pgvector >= 0.7.0 (binary_quantize and bit_hamming_ops); '
                        'this server has pgvector %', p_index,
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
    'set a collection''s search index: float (HNSW, L2), binary (Hamming HNSW on binary_quantize) or '
    'binary-ivf (Hamming IVFFlat on binary_quantize); binary kinds re-rank by exact L2 (pgvector >= 0.7)';
