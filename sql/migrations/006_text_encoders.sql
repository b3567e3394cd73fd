-- 006: SQL-native static text encoders (issue 25; sql/functions/80_text.sql).
--
-- A model bundle with a text_static.npy artefact gives every WordPiece token of its
-- vocabulary one trained vector; a query embeds as
--   l2_normalize(sum of the vectors of its word pieces + bias)
-- computed by jointembed.embed_text in SQL. The runtime (jointembed_pg.search.text_sql)
-- loads a model's vocabulary here once per model_id, when a collection or attachment of
-- that model is created or searched through SQL; rows of a model no collection and no
-- attachment version uses any more are deleted by triggers (80_text.sql).

CREATE TABLE jointembed.text_encoders (
    model_id       text        PRIMARY KEY,
    dim            integer     NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    vocab_size     integer     NOT NULL CHECK (vocab_size > 0),
    bias           @vector@.vector NOT NULL,
    unk_id         integer     NOT NULL,
    max_pieces     integer     NOT NULL CHECK (max_pieces >= 1),
    max_word_chars integer     NOT NULL DEFAULT 100 CHECK (max_word_chars >= 1),
    sha256         text        NOT NULL,            -- of the artefact file in the bundle
    loaded_at      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE jointembed.text_encoders IS
    'static text encoders (one per model id) that jointembed.embed_text computes in SQL';

CREATE TABLE jointembed.text_vocab (
    model_id text    NOT NULL REFERENCES jointembed.text_encoders (model_id) ON DELETE CASCADE,
    piece    text    NOT NULL,       -- WordPiece token, continuations with the ## prefix
    id       integer NOT NULL,       -- the tokenizer's id of the piece
    vec      @vector@.vector NOT NULL,
    PRIMARY KEY (model_id, piece)
);

CREATE UNIQUE INDEX text_vocab_model_id_id ON jointembed.text_vocab (model_id, id);

COMMENT ON TABLE jointembed.text_vocab IS
    'word pieces of each static text encoder with their trained vectors';
