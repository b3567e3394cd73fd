"""Benchmarks of jointembed_pg on the local machine: ``python -m benchmarks [--quick]``.

Sections (each figure of ``docs/BENCHMARKS.md`` comes from one run of the command):

* ingest (:mod:`.ingest_bench`, :mod:`.naive`): product path end to end, by stage, and
  against the naive PyTorch + row-by-row INSERT path, on real Flickr8K items;
* query (:mod:`.query_bench`, :mod:`.scale`, :mod:`.synth`): encode + SQL latency and
  recall@10 at 10k / 100k (/ 1M) stored vectors, HNSW ``ef_search`` sweep vs exact;
* index (:mod:`.index_bench`): HNSW build time and size per setting, table size;
* limit (:mod:`.limit`): image encoder GFLOP/s against the measured fp32 GEMM peak.

``python -m benchmarks.encoders`` (:mod:`.encoders`) is a separate command: encoder
throughput of PyTorch vs ONNX fp32 vs int8, written to ``docs/BENCHMARKS_ENCODERS.md``.
"""
