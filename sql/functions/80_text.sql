-- Text queries in plain SQL (issue 25): a static text encoder computed by the database.
--
--   SELECT id, key, distance FROM jointembed.search_text('photos', 'a dog running on the beach', 10);
--
-- A model's encoder lives in jointembed.text_encoders / jointembed.text_vocab
-- (migrations/006_text_encoders.sql), loaded by the runtime from the bundle's
-- text_static.npy. A query embeds as
--
--   l2_normalize(sum of vec over its word pieces + bias)
--
-- over the WordPiece ids of the query (no [CLS]/[SEP]), the first max_pieces kept
-- (max_tokens - 2, as the bundle's tokenizer truncates). The tokenizer is BERT uncased
-- (the bundle's tokenizer.json; jointembed.text_pieces equals it on every Flickr8K
-- caption, tests/test_sql_text.py):
--   1. NFD, then delete control/format/private-use characters and combining marks
--      (accents), whitespace -> space, a space each side of every CJK ideograph, lower();
--   2. split at spaces, each punctuation character a word of its own;
--   3. each word: the whole word if it is a piece (fast path), else greedy
--      longest-match-first WordPiece with '##' continuations; a word longer than 100
--      characters or with no tokenisation is one [UNK].
-- The character classes of step 1-2 are in 79_text_classes.sql (generated from the
-- tokenizers library). Differences from the Python tokenizer: lower() follows the
-- database's collation (a "C" collation lower-cases ASCII only: non-ASCII capitals that
-- are not accented Latin letters then become [UNK] or other pieces), and the literal
-- strings "[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]" in a query are read as punctuation
-- and words, not as special tokens. Needs a UTF8 database (normalize()).
--
-- Refusals, as the CLI: a query over 131,072 characters (the caption limit), a query
-- with no word piece (empty, whitespace, control characters) or only [UNK] pieces
-- (emoji, unsupported scripts) raises invalid_parameter_value; more than half [UNK]
-- raises a WARNING and embeds.

-- The words of a text after BERT normalisation and pre-tokenisation (steps 1-2).
CREATE OR REPLACE FUNCTION jointembed._text_words(p_text text)
RETURNS text[]
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    s text;
BEGIN
    s := normalize(p_text, NFD);
    s := regexp_replace(s, jointembed._text_re_remove(), '', 'g');
    s := regexp_replace(s, jointembed._text_re_space(), ' ', 'g');
    s := regexp_replace(s, '(' || jointembed._text_re_cjk() || ')', E' \\1 ', 'g');
    s := lower(s);
    s := regexp_replace(s, '(' || jointembed._text_re_punct() || ')', E' \\1 ', 'g');
    s := btrim(s, ' ');
    IF s = '' THEN
        RETURN '{}'::text[];
    END IF;
    RETURN regexp_split_to_array(s, ' +');
END
$fn$;

-- The WordPiece ids of p_text for the static text encoder of model p_model_id, without
-- [CLS]/[SEP], the first max_pieces kept. The SQL twin of
-- tokenizers.Tokenizer.encode(text, add_special_tokens=False).ids[:max_pieces].
CREATE OR REPLACE FUNCTION jointembed.text_pieces(p_model_id text, p_text text)
RETURNS integer[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, jointembed, pg_temp
SET plan_cache_mode = force_generic_plan   -- index look-ups: planning each call cost more than they do
AS $fn$
DECLARE
    enc   jointembed.text_encoders;
    words text[];
    ids   integer[];
    hits  integer;
    outp  integer[] := '{}';
    wp    integer[];
    w     text;
    wlen  integer;
    start integer;
    pid   integer;
    plen  integer;
BEGIN
    SELECT * INTO enc FROM jointembed.text_encoders x WHERE x.model_id = p_model_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'jointembed: no SQL text encoder is loaded for model %', quote_nullable(p_model_id)
            USING ERRCODE = 'undefined_object',
                  HINT = 'open the collection with a bundle that has text_static.npy (jointembed model build), '
                         'as the owner: `jointembed text-encoder load --collection NAME`';
    END IF;
    IF p_text IS NULL THEN
        RAISE EXCEPTION 'jointembed: query text is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- the caption limit of the runtime (limits.MAX_TEXT_CHARS): normalisation is linear in
    -- the text (about 1 us a character here), so a 10 MB query would hold a backend ~5 s
    IF char_length(p_text) > 131072 THEN
        RAISE EXCEPTION 'jointembed: query text is % characters, over the 131072-character limit',
            char_length(p_text) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- every word gives at least one piece: words past max_pieces cannot be kept
    words := (jointembed._text_words(p_text))[1:enc.max_pieces];
    SELECT array_agg(v.id ORDER BY w.n), count(v.id) INTO ids, hits
    FROM unnest(words) WITH ORDINALITY AS w(word, n)
    LEFT JOIN jointembed.text_vocab v ON v.model_id = p_model_id AND v.piece = w.word;
    IF hits = cardinality(words) THEN            -- fast path: every word is a piece
        RETURN coalesce(ids, '{}'::integer[]);
    END IF;
    FOR i IN 1 .. cardinality(words) LOOP
        IF ids[i] IS NOT NULL THEN
            outp := outp || ids[i];
        ELSE
            w := words[i];
            wlen := char_length(w);
            IF wlen > enc.max_word_chars THEN
                wp := ARRAY[enc.unk_id];
            ELSE
                wp := '{}';
                start := 1;
                WHILE start <= wlen LOOP         -- greedy longest match first
                    -- every candidate w[start:e] in one index scan (= ANY), the longest wins
                    SELECT v.id, char_length(v.piece) - CASE WHEN start = 1 THEN 0 ELSE 2 END INTO pid, plen
                    FROM jointembed.text_vocab v
                    WHERE v.model_id = p_model_id
                      AND v.piece = ANY (ARRAY(SELECT CASE WHEN start = 1 THEN '' ELSE '##' END
                                                      || substr(w, start, x.e - start + 1)
                                               FROM generate_series(start, wlen) AS x(e)))
                    ORDER BY char_length(v.piece) DESC LIMIT 1;
                    IF NOT FOUND THEN
                        wp := ARRAY[enc.unk_id];
                        EXIT;
                    END IF;
                    wp := wp || pid;
                    start := start + plen;
                END LOOP;
            END IF;
            outp := outp || wp;
        END IF;
        EXIT WHEN cardinality(outp) >= enc.max_pieces;
    END LOOP;
    RETURN outp[1:enc.max_pieces];
END
$fn$;

COMMENT ON FUNCTION jointembed.text_pieces(text, text) IS
    'WordPiece ids of a text (BERT uncased, no [CLS]/[SEP], truncated) for the SQL text encoder of a model';

-- The static embedding of p_query under model p_model_id: vector(dim), unit L2 norm.
-- p_who names the caller in messages.
CREATE OR REPLACE FUNCTION jointembed.embed_text_model(p_model_id text, p_query text,
                                                       p_who text DEFAULT 'jointembed.embed_text')
RETURNS @vector@.vector
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, jointembed, pg_temp
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    enc   jointembed.text_encoders;
    ids   integer[] := jointembed.text_pieces(p_model_id, p_query);
    unk   integer;
    s     @vector@.vector;
    n     float8;
BEGIN
    SELECT * INTO STRICT enc FROM jointembed.text_encoders x WHERE x.model_id = p_model_id;
    IF cardinality(ids) = 0 THEN
        RAISE EXCEPTION '%: cannot embed %: no word pieces left after normalisation (empty, whitespace or control characters only)',
            p_who, quote_literal(left(p_query, 40)) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    unk := cardinality(array_positions(ids, enc.unk_id));
    IF unk = cardinality(ids) THEN
        RAISE EXCEPTION '%: cannot embed %: % of % word pieces are unknown to the tokenizer ([UNK])',
            p_who, quote_literal(left(p_query, 40)), unk, cardinality(ids)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the vocabulary has no emoji and few symbols or non-Latin scripts: describe the picture in words';
    ELSIF unk * 2 > cardinality(ids) THEN
        RAISE WARNING '%: % of % word pieces of % are unknown to the tokenizer ([UNK]); results may be poor',
            p_who, unk, cardinality(ids), quote_literal(left(p_query, 40));
    END IF;
    SELECT @vector@.sum(v.vec) INTO s
    FROM unnest(ids) AS u(id)
    JOIN jointembed.text_vocab v ON v.model_id = p_model_id AND v.id = u.id;
    s := s OPERATOR(@vector@.+) enc.bias;
    n := @vector@.vector_norm(s);
    IF n = 0 OR n IS NULL THEN
        RAISE EXCEPTION '%: the embedding of % has norm 0', p_who, quote_literal(left(p_query, 40))
            USING ERRCODE = 'data_exception';
    END IF;
    -- l2_normalize arrived in pgvector 0.7: divide in real[] (works on 0.6 too)
    RETURN CAST(ARRAY(SELECT u.x / n FROM unnest(CAST(s AS real[])) WITH ORDINALITY AS u(x, o) ORDER BY u.o)
                AS @vector@.vector);
END
$fn$;

COMMENT ON FUNCTION jointembed.embed_text_model(text, text, text) IS
    'embedding of a text by the SQL text encoder of a model: l2_normalize(sum of word-piece vectors + bias)';

-- The query embedding of a text for a collection (its model's SQL text encoder).
CREATE OR REPLACE FUNCTION jointembed.embed_text(collection text, query text)
RETURNS @vector@.vector
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    m text;
BEGIN
    SELECT c.model_id INTO m FROM jointembed.collections c WHERE c.name = embed_text.collection;
    IF m IS NULL THEN
        RAISE EXCEPTION 'jointembed: no collection named %', quote_nullable(embed_text.collection)
            USING ERRCODE = 'undefined_table';
    END IF;
    RETURN jointembed.embed_text_model(m, embed_text.query, 'jointembed.embed_text');
END
$fn$;

COMMENT ON FUNCTION jointembed.embed_text(text, text) IS
    'query embedding of a text, computed in SQL by the collection model''s static text encoder';

-- k items of a collection nearest to a text query: jointembed.search with the query
-- embedded by jointembed.embed_text. Same columns and rules as jointembed.search
-- (L2 distance, exactly k rows when k items of the target modality exist); target
-- image (default) | text | NULL (both).
CREATE OR REPLACE FUNCTION jointembed.search_text(collection text, query text, k integer,
                                                  target text DEFAULT 'image')
RETURNS TABLE (id bigint, key text, modality text, distance float8, source text, text text)
LANGUAGE plpgsql
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
BEGIN
    RETURN QUERY
        SELECT s.id, s.key, s.modality, s.distance, s.source, s.text
        FROM jointembed.search(search_text.collection,
                               jointembed.embed_text(search_text.collection, search_text.query),
                               search_text.k, search_text.target) AS s;
END
$fn$;

COMMENT ON FUNCTION jointembed.search_text(text, text, integer, text) IS
    'k nearest items of a collection to a text query embedded in SQL (jointembed.embed_text); target image|text|NULL';

-- k rows of an attached table nearest to a text query (the active version's model).
CREATE OR REPLACE FUNCTION jointembed.search_attached_text(tbl regclass, query text, k integer,
                                                           target text DEFAULT 'image')
RETURNS TABLE (key text, modality text, distance float8)
LANGUAGE plpgsql
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
DECLARE
    m text;
BEGIN
    SELECT v.model_id INTO m
    FROM jointembed.attachments a
    JOIN jointembed.attachment_versions v ON v.attachment_id = a.id AND v.state = 'active'
    WHERE a.table_oid = search_attached_text.tbl::oid;
    IF m IS NULL THEN
        RAISE EXCEPTION 'jointembed: table % is not attached', search_attached_text.tbl
            USING ERRCODE = 'undefined_table';
    END IF;
    RETURN QUERY
        SELECT s.key, s.modality, s.distance
        FROM jointembed.search_attached(search_attached_text.tbl,
                                        jointembed.embed_text_model(m, search_attached_text.query,
                                                                    'jointembed.search_attached_text'),
                                        search_attached_text.k, search_attached_text.target) AS s;
END
$fn$;

COMMENT ON FUNCTION jointembed.search_attached_text(regclass, text, integer, text) IS
    'k nearest rows of an attached table to a text query embedded in SQL; target image|text|NULL';

-- Encoders of models that no collection and no live attachment version uses any more
-- are deleted (with their vocabulary) after a collection is dropped or re-embedded and
-- after an attachment version is retired, re-modelled or detached.
CREATE OR REPLACE FUNCTION jointembed._text_encoders_gc()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, jointembed, pg_temp AS $fn$
BEGIN
    DELETE FROM jointembed.text_encoders e
    WHERE NOT EXISTS (SELECT 1 FROM jointembed.collections c WHERE c.model_id = e.model_id)
      AND NOT EXISTS (SELECT 1 FROM jointembed.attachment_versions v
                      WHERE v.model_id = e.model_id AND v.state <> 'retired');
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER text_encoders_gc
    AFTER DELETE OR UPDATE OF model_id ON jointembed.collections
    FOR EACH STATEMENT EXECUTE FUNCTION jointembed._text_encoders_gc();

CREATE OR REPLACE TRIGGER text_encoders_gc
    AFTER DELETE OR UPDATE OF model_id, state ON jointembed.attachment_versions
    FOR EACH STATEMENT EXECUTE FUNCTION jointembed._text_encoders_gc();
