"""Triton kernels of the dropgrad ops (installed as dropgrad_cuda.triton_kernels).

Importing `.ops` registers them as torch.ops.dropgrad_triton.*, the schemas of csrc/ops.cpp.
They run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; `python -m
dropgrad_cuda.triton_kernels.aot --arch 90` compiles them ahead of time without a GPU.
"""
