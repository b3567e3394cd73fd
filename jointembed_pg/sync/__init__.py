"""Attached user tables: catalog (attach/detach/status), queue drain, long-running worker, reembed."""
