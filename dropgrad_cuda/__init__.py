"""Fused, exactly reproducible kernels for the regularizers of MAML-style meta-learning:
DropGrad (noisy inner updates), Meta-Dropout (learned multiplicative feature noise) and CML."""
import torch  # loads libtorch before the extension that links against it

from . import _C  # noqa: F401  registers the dropgrad:: ops and their CPU (and CUDA) kernels
from . import reference
from .ops import (BACKENDS, cuda_emulator_built, cuda_kernels_built, drop_grad, dropgrad_step, dropgrad_step_,
                  dropgrad_update, logit_noise, meta_dropout, philox4x32_10)

__all__ = ["BACKENDS", "cuda_emulator_built", "cuda_kernels_built", "drop_grad", "dropgrad_step", "dropgrad_step_",
           "dropgrad_update", "logit_noise", "meta_dropout", "philox4x32_10", "reference"]
