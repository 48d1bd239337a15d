"""Scoring kernels with slow reference oracles beside them (installed as `retriever.kernels`)."""
