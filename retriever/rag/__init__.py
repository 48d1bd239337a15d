"""RAG generation that reuses the KV cache of retrieved chunks (Cache-Craft / CacheBlend / APE style):
content-addressed chunk-cache keys, a tiered store, re-rotation of cached keys to new positions,
and selective recomputation of the tokens whose cached KV deviates most."""
