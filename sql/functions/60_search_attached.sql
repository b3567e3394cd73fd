-- Search over an attached table's active side table.

-- k nearest rows of an attached table to a query vector (L2, float8, smaller is closer),
-- searching the active version only (one model), through jointembed.knn (15_knn.sql):
-- exactly k rows whenever k rows are embedded. key is the user's key as text: join
-- back with `JOIN t ON t.<key> = r.key::<key type>`. p_modality image|text|NULL (both).
CREATE OR REPLACE FUNCTION jointembed.search_attached(p_table regclass, p_query @vector@.vector, p_k integer DEFAULT 10,
                                           p_modality text DEFAULT NULL)
RETURNS TABLE (key text, modality text, distance float8)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    a jointembed.attachments;
    v jointembed.attachment_versions;
BEGIN
    IF p_k IS NULL OR p_k < 1 THEN
        RAISE EXCEPTION 'jointembed.search_attached: k must be >= 1, got %', p_k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_modality IS NOT NULL AND p_modality NOT IN ('image', 'text') THEN
        RAISE EXCEPTION 'jointembed.search_attached: modality must be ''image'', ''text'' or NULL, got %',
            quote_literal(p_modality) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO a FROM jointembed.attachments x WHERE x.table_oid = p_table::oid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'jointembed: table % is not attached', p_table USING ERRCODE = 'undefined_table';
    END IF;
    SELECT * INTO STRICT v FROM jointembed.attachment_versions x
    WHERE x.attachment_id = a.id AND x.state = 'active';
    IF p_query IS NULL THEN
        RAISE EXCEPTION 'jointembed.search_attached: query vector is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF @vector@.vector_dims(p_query) <> v.dim THEN
        RAISE EXCEPTION 'jointembed: query vector has % dimensions but % is embedded with model % (dim %)',
            @vector@.vector_dims(p_query), p_table, v.model_id, v.dim USING ERRCODE = 'data_exception';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT (r.item).key::text, (r.item).modality, r.distance '
        'FROM unnest($3::text[]) AS m(modality), '
        'LATERAL jointembed.knn(NULL::jointembed.%I, $1, $2, m.modality) AS r '
        'ORDER BY r.distance LIMIT $2', v.side_table)
        USING p_query, p_k, CASE WHEN p_modality IS NULL THEN ARRAY['image', 'text'] ELSE ARRAY[p_modality] END;
END
$fn$;

COMMENT ON FUNCTION jointembed.search_attached(regclass, @vector@.vector, integer, text) IS
    'k nearest rows of an attached table (active model only): key as text, modality, L2 distance';
