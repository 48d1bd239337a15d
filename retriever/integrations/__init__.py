"""Adapters for RAG frameworks (the `integrations` extra): LangChain and LlamaIndex vector stores
and retrievers over local or remote collections. Import the submodule you use; each imports its
framework, nothing here does."""
