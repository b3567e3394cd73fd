-- SQL search functions over a collection's items table.
--
-- Distances are L2 (pgvector `<->`), float8, smaller is closer. Each modality is searched
-- by jointembed.knn (15_knn.sql): the modality's partial HNSW index
-- (jointembed.items_<id>_<modality>_hnsw) when it exists, with hnsw.ef_search at least k,
-- escalated (or an iterative scan on pgvector >= 0.8) and finally an exact scan, so a call
-- returns exactly k rows whenever the collection holds k items of the target modalities.
-- The embedding column is not returned; join jointembed.items_table(collection) on id
-- when you need it.

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

CREATE OR REPLACE FUNCTION jointembed.search(collection text, query @vector@.vector, k integer, target text DEFAULT NULL)
RETURNS TABLE (id bigint, key text, modality text, distance float8, source text, text text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    c jointembed.collections;
BEGIN
    SELECT * INTO c FROM jointembed.collections x WHERE x.name = collection;
    IF NOT FOUND OR c.items_table IS NULL THEN
        RAISE EXCEPTION 'jointembed: no collection named %', quote_literal(collection)
            USING ERRCODE = 'undefined_table';
    END IF;
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'jointembed.search: k must be >= 1, got %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF target IS NOT NULL AND target NOT IN ('image', 'text') THEN
        RAISE EXCEPTION 'jointembed.search: target must be ''image'', ''text'' or NULL, got %',
            quote_literal(target) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF query IS NULL THEN
        RAISE EXCEPTION 'jointembed.search: query vector is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF @vector@.vector_dims(query) <> c.dim THEN
        RAISE EXCEPTION 'jointembed.search: query vector has % dimensions but collection % stores %-dimensional embeddings of model %',
            @vector@.vector_dims(query), quote_literal(collection), c.dim, quote_literal(c.model_id)
            USING ERRCODE = 'data_exception',
                  HINT = 'embed the query with the collection''s model (jointembed.collections.model_id)';
    END IF;
    -- one knn call per modality; ties in distance broken by id outside the ranking queries
    RETURN QUERY EXECUTE format(
        'SELECT (r.item).id, (r.item).key, (r.item).modality, r.distance, (r.item).source, (r.item).text '
        'FROM unnest($3::text[]) AS m(modality), '
        'LATERAL jointembed.knn(NULL::jointembed.%I, $1, $2, m.modality) AS r '
        'ORDER BY r.distance, (r.item).id LIMIT $2', c.items_table)
        USING query, k, CASE WHEN target IS NULL THEN ARRAY['image', 'text'] ELSE ARRAY[target] END;
END
$fn$;

COMMENT ON FUNCTION jointembed.search(text, @vector@.vector, integer, text) IS
    'k nearest items of a collection to a query vector by L2 distance; target image|text|NULL (both)';

-- Items nearest to an item already in the collection (the item itself excluded).
-- target NULL means the item's own modality.
CREATE OR REPLACE FUNCTION jointembed.more_like_this(collection text, item_id bigint, k integer, target text DEFAULT NULL)
RETURNS TABLE (id bigint, key text, modality text, distance float8, source text, text text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    tbl text := jointembed._items_table(collection);
    q   @vector@.vector;
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
        ORDER BY s.distance, s.id
        LIMIT k;
END
$fn$;

COMMENT ON FUNCTION jointembed.more_like_this(text, bigint, integer, text) IS
    'k nearest items to an existing item (itself excluded); target NULL = the item''s modality';
