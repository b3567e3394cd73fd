"""Retrieval evaluation through the database (R@K, medr, rsum) and the HTML gallery of hits."""
