"""GPU scoring kernels in Triton. Import these modules only where Triton is installed: on a CUDA
machine, or on CPU with `TRITON_INTERPRET=1` (how CI tests them on small shapes).
Callers go through `retriever.kernels.gpu`, which picks these or its torch fallback."""
