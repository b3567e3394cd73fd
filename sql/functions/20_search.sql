-- 002: SQL search functions over a collection's items table.
--
-- Distances are L2 (pgvector `<->`), float8, smaller is closer. Each single-modality
-- query is `ORDER BY embedding <-> $1 LIMIT k` with a literal modality, so the planner
-- uses that modality's partial HNSW index (jointembed.items_<id>_<modality>_hnsw) when it
-- exists. hnsw.ef_search is raised to k for the duration of the call (an HNSW scan
-- returns at most ef_search rows) and restored afterwards. The embedding column is not
-- returned; join jointembed.items_table(collection) on id when you need it.

CREATE OR REPLACE FUNCTION jointembed._items_table(p_collection text)
RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    tbl text;
BEGIN
    SELECT c.items_table INTO tbl FROM jointembed.collections c WHERE c.name = p_collection;
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'jointembed: no collection named %', quote_literal(p_collection)
            USING ERRCODE = 'undefined_table';
    END IF;
    RETURN tbl;
END
$fn$;

CREATE OR REPLACE FUNCTION jointembed.search(collection text, query vector, k integer, target text DEFAULT NULL)
RETURNS TABLE (id bigint, key text, modality text, distance float8, source text, text text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    tbl     text := jointembed._items_table(collection);
    old_ef  text := current_setting('hnsw.ef_search', true);
    one     text := 'SELECT i.id, i.key, i.modality, i.embedding <-> $1 AS distance, i.source, i.text '
                    'FROM jointembed.%1$I i WHERE i.modality = %2$L '
                    'ORDER BY i.embedding <-> $1 LIMIT $2';
BEGIN
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'jointembed.search: k must be >= 1, got %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF target IS NOT NULL AND target NOT IN ('image', 'text') THEN
        RAISE EXCEPTION 'jointembed.search: target must be ''image'', ''text'' or NULL, got %',
            quote_literal(target) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF k > coalesce(old_ef, '40')::integer THEN
        PERFORM set_config('hnsw.ef_search', least(k, 1000)::text, true);
    END IF;
    IF target IS NULL THEN
        RETURN QUERY EXECUTE
            'SELECT * FROM ((' || format(one, tbl, 'image') || ') UNION ALL ('
            || format(one, tbl, 'text') || ')) u ORDER BY u.distance LIMIT $2'
            USING query, k;
    ELSE
        RETURN QUERY EXECUTE format(one, tbl, target) USING query, k;
    END IF;
    IF old_ef IS NOT NULL THEN
        PERFORM set_config('hnsw.ef_search', old_ef, true);
    END IF;
END
$fn$;

COMMENT ON FUNCTION jointembed.search(text, vector, integer, text) IS
    'k nearest items of a collection to a query vector by L2 distance; target image|text|NULL (both)';

-- Items nearest to an item already in the collection (the item itself excluded).
-- target NULL means the item's own modality.
CREATE OR REPLACE FUNCTION jointembed.more_like_this(collection text, item_id bigint, k integer, target text DEFAULT NULL)
RETURNS TABLE (id bigint, key text, modality text, distance float8, source text, text text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    tbl text := jointembed._items_table(collection);
    q   vector;
    m   text;
BEGIN
    EXECUTE format('SELECT i.embedding, i.modality FROM jointembed.%I i WHERE i.id = $1', tbl)
        INTO q, m USING item_id;
    IF q IS NULL THEN
        RAISE EXCEPTION 'jointembed.more_like_this: no item % in collection %',
            item_id, quote_literal(collection) USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY
        SELECT s.id, s.key, s.modality, s.distance, s.source, s.text
        FROM jointembed.search(collection, q, k + 1, coalesce(target, m)) s
        WHERE s.id <> item_id
        ORDER BY s.distance
        LIMIT k;
END
$fn$;

COMMENT ON FUNCTION jointembed.more_like_this(text, bigint, integer, text) IS
    'k nearest items to an existing item (itself excluded); target NULL = the item''s modality';
