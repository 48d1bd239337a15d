"""Generated gRPC code; import it only through retriever.conversions."""
