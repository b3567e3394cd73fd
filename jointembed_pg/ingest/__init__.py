"""Reading untrusted items and writing their embeddings: file/URL/bytea sources, readers,
decoder sandbox, the batch pipeline, the Flickr8K reader and the Ray backfill."""
