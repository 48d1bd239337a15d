"""Index families and their on-disk storage (installed as `retriever.index`)."""
