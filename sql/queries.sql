-- Named query templates for jointembed_pg.search.store / jointembed_pg.search.knn.
-- Each block starts with "-- name: <name>". Values are bound parameters (%(name)s);
-- {braced} names are identifiers/literals composed with psycopg.sql (Identifier/Literal).
-- The items table is always aliased "i" so caller filters can refer to i.<column>.

-- name: collection_get
SELECT id, name, model_id, dim, items_table, created_at, storage, index_kind
FROM jointembed.collections WHERE name = %(name)s

-- name: collection_list
SELECT id, name, model_id, dim, items_table, created_at, storage, index_kind
FROM jointembed.collections ORDER BY name

-- name: collection_create
SELECT id, name, model_id, dim, items_table, created_at, storage, index_kind
FROM jointembed.create_collection(%(name)s, %(model_id)s, %(dim)s, %(storage)s)

-- name: collection_set_index
SELECT id, name, model_id, dim, items_table, created_at, storage, index_kind
FROM jointembed.set_collection_index(%(name)s, %(index)s)

-- name: collection_drop
SELECT jointembed.drop_collection(%(name)s)

-- name: stage_create
CREATE TEMP TABLE IF NOT EXISTS jointembed_stage (
    ord integer, modality text, key text, source text, text text,
    content_hash text, embedding {vector}
) ON COMMIT DELETE ROWS

-- name: stage_clear
DELETE FROM pg_temp.jointembed_stage

-- name: stage_copy
COPY pg_temp.jointembed_stage (ord, modality, key, source, text, content_hash, embedding)
FROM STDIN (FORMAT BINARY)

-- name: stage_merge
INSERT INTO {items} AS t (modality, key, source, text, content_hash, model_id, embedding)
SELECT DISTINCT ON (s.modality, s.key)
       s.modality, s.key, s.source, s.text, s.content_hash, %(model_id)s::text, s.embedding
FROM pg_temp.jointembed_stage s
ORDER BY s.modality, s.key, s.ord DESC
ON CONFLICT (modality, key) DO UPDATE
SET source = EXCLUDED.source, text = EXCLUDED.text, content_hash = EXCLUDED.content_hash,
    model_id = EXCLUDED.model_id, embedding = EXCLUDED.embedding, updated_at = now()

-- name: content_hashes
SELECT i.key, i.content_hash FROM {items} i
WHERE i.modality = %(modality)s AND i.key = ANY(%(keys)s)

-- name: count
SELECT count(*) FROM {items} i WHERE (%(modality)s::text IS NULL OR i.modality = %(modality)s)

-- name: delete_keys
DELETE FROM {items} i WHERE i.modality = %(modality)s AND i.key = ANY(%(keys)s)

-- name: get_item
SELECT i.id, i.key, i.modality, 0.0::float8 AS distance, i.source, i.text, i.embedding
FROM {items} i WHERE i.id = %(je_id)s

-- name: set_local
SELECT pg_catalog.set_config(%(name)s, %(value)s, true)

-- name: knn
SELECT (r.item).id, (r.item).key, (r.item).modality, r.distance, (r.item).source, (r.item).text{extra}
FROM jointembed.knn(NULL::{items}, %(je_q)s, %(je_k)s, %(je_target)s, p_filter => %(je_filter)s,
                    p_args => %(je_args)s, p_ef_search => %(je_ef)s, p_exact => %(je_exact)s,
                    p_exact_below => %(je_below)s) AS r

-- name: vector_schema
SELECT (SELECT n.nspname FROM pg_catalog.pg_extension e
        JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector')

-- name: vector_version
SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'vector'
