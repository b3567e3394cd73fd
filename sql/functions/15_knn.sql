-- The one k-nearest-neighbour rule. Every search runs its k-NN query through
-- jointembed.knn: jointembed.search / more_like_this / search_attached, the Python API
-- (jointembed_pg.search.knn, Store/Collection.search_vector, sync.search_attached) and
-- jointembed_pg.search.sqla.nearest. It returns exactly min(k, rows that match) rows, even when
-- dead tuples (updated or deleted rows not yet vacuumed) or a selective filter fill the
-- HNSW candidate list:
--
--   * p_exact, or a filter matching at most p_exact_below rows: exact scan.
--   * pgvector >= 0.8: one HNSW scan with hnsw.iterative_scan = strict_order (results in
--     exact distance order), hnsw.ef_search = max(k, ef_search) and hnsw.max_scan_tuples
--     raised to at least 100 * k (the server's value if higher).
--   * pgvector < 0.8: HNSW scans with hnsw.ef_search = max(k, ef_search), then x4 per step
--     up to 1000 (pgvector's maximum), while fewer than k rows come back.
--   * Still fewer than k rows: exact scan (ORDER BY l2_distance(...), which no index serves).
--   * A collection with index_kind 'binary' (16_binary_index.sql): the HNSW scans above
--     run on the bit index, ORDER BY binary_quantize(embedding)::bit(D) <~> binary_quantize(query)
--     LIMIT pool (jointembed._knn_binary_pool(k) = max(40 k, 400)), and the pool is re-ranked
--     by exact L2 on the full vectors; the k nearest of it come back (the exact scan stays
--     the fallback when the pool holds fewer than k rows).
--   * index_kind 'binary-ivf': the same pool query served by the IVFFlat bit index, with a
--     pool of jointembed._knn_ivf_pool(k) = max(100 k, 1000) and ivfflat.probes =
--     jointembed._knn_ivf_probes(lists, rows, pool); pgvector >= 0.8:
--     ivfflat.iterative_scan = relaxed_order (probes more lists while fewer than pool rows
--     came back; the order does not matter, the pool is re-ranked); pgvector < 0.8: probes
--     x4 per step up to all lists while fewer than k rows come back. Then the exact scan.
--
-- Settings are changed with set_config(..., is_local => true) and restored before
-- returning. Each attempt is reported at DEBUG level (SET client_min_messages = debug1
-- to see which path answered). Distances are L2 (float8, smaller is closer), as `<->`.

-- Schema of the installed vector extension ('public', 'extensions', ...); NULL if none.
CREATE OR REPLACE FUNCTION jointembed._vector_schema()
RETURNS name
LANGUAGE sql STABLE AS $fn$
    SELECT n.nspname FROM pg_catalog.pg_extension e
    JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'vector'
$fn$;

-- True when the installed pgvector has hnsw.iterative_scan (>= 0.8).
CREATE OR REPLACE FUNCTION jointembed._vector_iterative_scan()
RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce((SELECT string_to_array(substring(e.extversion FROM '^[0-9]+\.[0-9]+'), '.')::int[]
                     FROM pg_catalog.pg_extension e WHERE e.extname = 'vector') >= ARRAY[0, 8], false)
$fn$;

-- k nearest rows of a table to p_query among rows with modality = p_modality.
--
-- p_rows: NULL cast to the table's row type (NULL::jointembed.items_1); the table needs
--   columns modality text and embedding vector(D). Rows come back whole (item) with
--   their distance, nearest first.
-- p_filter: an extra SQL condition on the table aliased i, run with the caller's
--   privileges and search_path (p_search_path). It is SQL text: write it yourself, never
--   build it from untrusted input; it reads values from $3, the jsonb p_args
--   (e.g. p_filter => 'i.source LIKE $3->>''prefix''', p_args => '{"prefix": "/shop/%"}').
-- p_ef_search: starting hnsw.ef_search (1..1000; NULL = the current setting).
-- p_exact_below: with a filter, answer exactly when it matches at most this many rows
--   (NULL = 2000; 0 = never).
CREATE OR REPLACE FUNCTION jointembed.knn(p_rows anyelement, p_query @vector@.vector, p_k integer, p_modality text,
                                          p_filter text DEFAULT NULL, p_args jsonb DEFAULT NULL,
                                          p_ef_search integer DEFAULT NULL, p_exact boolean DEFAULT false,
                                          p_exact_below integer DEFAULT NULL,
                                          p_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (item anyelement, distance float8)
LANGUAGE plpgsql AS $fn$
DECLARE
    rel      regclass;
    tbl      text;           -- schema.table, for messages only (SQL uses nsp/relname with %I)
    nsp      name;
    relname  name;
    vs       name := jointembed._vector_schema();
    dim      integer;
    cond     text := '';
    args     jsonb := coalesce(p_args, '{}'::jsonb);
    cap      integer := coalesce(p_exact_below, 2000);
    ann_q    text;
    exact_q  text;
    count_q  text;
    got      record;
    have     integer := -1;  -- rows of the last attempt; -1: none run
    ef       integer;
    old_ef   text := current_setting('hnsw.ef_search', true);
    old_it   text;
    old_max  text;
    old_path text;
    n        bigint;
    coltype  text;   -- 'vector' or 'halfvec': the query is cast to the column's type
    pool     integer;  -- binary index: Hamming candidates re-ranked by L2 ($4); NULL: float index
    lists    integer;  -- binary-ivf index: its lists; NULL otherwise
    ivf_rows float8;
    probes   integer;
    old_pr   text;
BEGIN
    SELECT c.oid, format('%I.%I', ns.nspname, c.relname), ns.nspname, c.relname INTO rel, tbl, nsp, relname
    FROM pg_catalog.pg_type t
    JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
    JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
    WHERE t.oid = pg_typeof(p_rows) AND c.relkind IN ('r', 'p');
    IF rel IS NULL THEN
        RAISE EXCEPTION 'jointembed.knn: p_rows must be NULL cast to a table''s row type, got %',
            pg_typeof(p_rows) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT a.atttypmod, t.typname INTO dim, coltype
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = rel AND a.attname = 'embedding' AND NOT a.attisdropped
      AND t.typnamespace = (SELECT e.extnamespace FROM pg_catalog.pg_extension e WHERE e.extname = 'vector')
      AND t.typname IN ('vector', 'halfvec');
    IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                WHERE a.attrelid = rel AND a.attname = 'modality' AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'jointembed.knn: table % has no columns embedding vector/halfvec and modality', tbl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_k IS NULL OR p_k < 1 THEN
        RAISE EXCEPTION 'jointembed.knn: k must be >= 1, got %', p_k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_modality IS NULL OR p_modality NOT IN ('image', 'text') THEN
        RAISE EXCEPTION 'jointembed.knn: modality must be ''image'' or ''text'', got %',
            coalesce(quote_literal(p_modality), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_ef_search IS NOT NULL AND p_ef_search NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'jointembed.knn: ef_search must be in 1..1000, got %', p_ef_search
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cap < 0 THEN
        RAISE EXCEPTION 'jointembed.knn: exact_below must be >= 0, got %', cap USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_query IS NULL THEN
        RAISE EXCEPTION 'jointembed.knn: query vector is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF dim > 0 AND @vector@.vector_dims(p_query) <> dim THEN
        RAISE EXCEPTION 'jointembed.knn: query vector has % dimensions but %.embedding is vector(%)',
            @vector@.vector_dims(p_query), tbl, dim USING ERRCODE = 'data_exception';
    END IF;
    IF jsonb_typeof(args) <> 'object' THEN
        RAISE EXCEPTION 'jointembed.knn: p_args must be a jsonb object' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF p_filter IS NOT NULL THEN
        -- p_filter is the calling application's own SQL (Python `where=`), never data: its
        -- values travel in p_args ($3). knn is SECURITY INVOKER and runs it under the
        -- caller's search_path and privileges, so it can do nothing the caller could not.
        cond := ' AND (' || p_filter || ')';
    END IF;
    -- $1 query, $2 limit, $3 args. Every function, operator and type is schema-qualified
    -- (pg_catalog's too), so the caller's search_path (used for the filter, and possibly
    -- holding a writable schema such as public) cannot change what they mean: not even
    -- with a better-matching overload (an array_agg taking this very row type).
    ann_q := format('SELECT pg_catalog.array_agg(s.i ORDER BY s.d) AS items, pg_catalog.array_agg(s.d ORDER BY s.d) AS dists '
                    'FROM (SELECT i, i.embedding OPERATOR(%1$I.<->) CAST($1 AS %1$I.%4$I) AS d FROM %2$I.%5$I i '
                    'WHERE i.modality OPERATOR(pg_catalog.=) CAST(%3$L AS pg_catalog.text)', vs, nsp, p_modality, coltype, relname)
             || cond || format(' ORDER BY i.embedding OPERATOR(%1$I.<->) CAST($1 AS %1$I.%2$I) LIMIT $2) s', vs, coltype);
    exact_q := format('SELECT pg_catalog.array_agg(s.i ORDER BY s.d) AS items, pg_catalog.array_agg(s.d ORDER BY s.d) AS dists '
                      'FROM (SELECT i, %1$I.l2_distance(i.embedding, CAST($1 AS %1$I.%4$I)) AS d FROM %2$I.%5$I i '
                      'WHERE i.modality OPERATOR(pg_catalog.=) CAST(%3$L AS pg_catalog.text)', vs, nsp, p_modality, coltype, relname)
               || cond || ' ORDER BY 2 LIMIT $2) s';

    IF jointembed._knn_binary(rel) THEN
        -- Hamming top-pool from the bit index (the ORDER BY expression is the index's), then
        -- exact L2 over the pool; dim is the column's checked typmod (an integer).
        pool := greatest(jointembed._knn_binary_pool(p_k), p_k);
        ann_q := format('SELECT pg_catalog.array_agg(s.i ORDER BY s.d) AS items, pg_catalog.array_agg(s.d ORDER BY s.d) AS dists '
                        'FROM (SELECT c.i, (c.i).embedding OPERATOR(%1$I.<->) CAST($1 AS %1$I.%4$I) AS d '
                        'FROM (SELECT i FROM %2$I.%5$I i WHERE i.modality OPERATOR(pg_catalog.=) CAST(%3$L AS pg_catalog.text)', vs, nsp, p_modality, coltype, relname)
                 || cond || format(' ORDER BY CAST(%1$I.binary_quantize(i.embedding) AS pg_catalog.bit(%3$L)) '
                                   'OPERATOR(%1$I.<~>) %1$I.binary_quantize(CAST($1 AS %1$I.%2$I)) LIMIT $4) c '
                                   'ORDER BY 2 LIMIT $2) s', vs, coltype, dim);
        IF jointembed._knn_index_kind(rel) = 'binary-ivf' THEN
            SELECT x.lists, x.n_rows INTO lists, ivf_rows FROM jointembed._knn_ivf_index(rel, p_modality) x;
            IF lists IS NOT NULL THEN
                pool := greatest(jointembed._knn_ivf_pool(p_k), p_k);
            END IF;
        END IF;
        IF lists IS NULL THEN
            RAISE DEBUG 'jointembed.knn: binary index: % Hamming candidates re-ranked by L2', pool;
        ELSE
            probes := jointembed._knn_ivf_probes(lists, ivf_rows, pool);
            RAISE DEBUG 'jointembed.knn: binary-ivf index: % Hamming candidates from % of % lists re-ranked by L2',
                pool, probes, lists;
        END IF;
    END IF;

    -- the filter's search_path (the caller's) is set around each statement holding the
    -- filter only; the rest of this body resolves under the function's own path
    old_path := current_setting('search_path');
    IF p_filter IS NULL THEN
        p_search_path := old_path;
    END IF;

    IF NOT p_exact AND p_filter IS NOT NULL AND cap > 0 THEN
        count_q := format('SELECT pg_catalog.count(*) FROM (SELECT 1 FROM %I.%I i '
                          'WHERE i.modality OPERATOR(pg_catalog.=) CAST(%L AS pg_catalog.text)', nsp, relname, p_modality)
                   || cond || ' LIMIT $2) s';
        n := cap + 1;
        PERFORM set_config('search_path', p_search_path, true);
        EXECUTE count_q INTO n USING p_query, n, args;
        PERFORM pg_catalog.set_config('search_path', old_path, true);
        p_exact := n <= cap;
        RAISE DEBUG 'jointembed.knn: the filter matches % rows (exact_below %)', CASE WHEN p_exact THEN n::text ELSE 'more than ' || cap END, cap;
    END IF;

    IF NOT p_exact AND lists IS NOT NULL THEN
        old_pr := current_setting('ivfflat.probes', true);
        IF jointembed._vector_iterative_scan() THEN
            old_it := current_setting('ivfflat.iterative_scan', true);
            PERFORM set_config('ivfflat.iterative_scan', 'relaxed_order', true);
        END IF;
        LOOP
            PERFORM set_config('ivfflat.probes', probes::text, true);
            PERFORM set_config('search_path', p_search_path, true);
            EXECUTE ann_q INTO got USING p_query, p_k, args, pool;
            PERFORM pg_catalog.set_config('search_path', old_path, true);
            have := coalesce(cardinality(got.items), 0);
            RAISE DEBUG 'jointembed.knn: % rows of % at ivfflat.probes %', have, p_k, probes;
            EXIT WHEN have >= p_k OR probes >= lists;
            probes := least(probes::bigint * 4, lists)::integer;
        END LOOP;
        IF old_it IS NOT NULL OR jointembed._vector_iterative_scan() THEN
            PERFORM set_config('ivfflat.iterative_scan', coalesce(old_it, 'off'), true);
        END IF;
        PERFORM set_config('ivfflat.probes', coalesce(old_pr, '1'), true);
    ELSIF NOT p_exact THEN
        ef := least(greatest(coalesce(p_ef_search, old_ef::integer, 40), coalesce(pool, p_k)), 1000);
        IF jointembed._vector_iterative_scan() THEN
            old_it := current_setting('hnsw.iterative_scan', true);
            old_max := current_setting('hnsw.max_scan_tuples', true);
            PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
            PERFORM set_config('hnsw.max_scan_tuples',
                               least(greatest(coalesce(old_max::bigint, 20000), 100::bigint * coalesce(pool, p_k)), 2147483647)::text, true);
            PERFORM set_config('hnsw.ef_search', ef::text, true);
            PERFORM set_config('search_path', p_search_path, true);
            EXECUTE ann_q INTO got USING p_query, p_k, args, pool;
            PERFORM pg_catalog.set_config('search_path', old_path, true);
            have := coalesce(cardinality(got.items), 0);
            RAISE DEBUG 'jointembed.knn: % rows of % from iterative scan (ef_search %)', have, p_k, ef;
            PERFORM set_config('hnsw.iterative_scan', coalesce(old_it, 'off'), true);
            PERFORM set_config('hnsw.max_scan_tuples', coalesce(old_max, '20000'), true);
        ELSE
            LOOP
                PERFORM set_config('hnsw.ef_search', ef::text, true);
                PERFORM set_config('search_path', p_search_path, true);
                EXECUTE ann_q INTO got USING p_query, p_k, args, pool;
                PERFORM pg_catalog.set_config('search_path', old_path, true);
                have := coalesce(cardinality(got.items), 0);
                RAISE DEBUG 'jointembed.knn: % rows of % at ef_search %', have, p_k, ef;
                EXIT WHEN have >= p_k OR ef >= 1000;
                ef := least(ef * 4, 1000);
            END LOOP;
        END IF;
        PERFORM set_config('hnsw.ef_search', coalesce(old_ef, '40'), true);
    END IF;

    IF have < p_k THEN
        PERFORM set_config('search_path', p_search_path, true);
        EXECUTE exact_q INTO got USING p_query, p_k, args;
        PERFORM pg_catalog.set_config('search_path', old_path, true);
        RAISE DEBUG 'jointembed.knn: % rows of % from exact scan', coalesce(cardinality(got.items), 0), p_k;
    END IF;
    RETURN QUERY SELECT got.items[x], got.dists[x] FROM generate_subscripts(got.items, 1) x ORDER BY x;
END
$fn$;

COMMENT ON FUNCTION jointembed.knn(anyelement, @vector@.vector, integer, text, text, jsonb, integer, boolean, integer, text) IS
    'k nearest rows (item, L2 distance) of a table with embedding/modality columns: exactly min(k, matches) '
    'rows (ef_search escalation or iterative scan, then exact); optional filter on alias i with values in $3 = p_args';
