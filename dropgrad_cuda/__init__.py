import torch  # loads libc10/libtorch before the extension needs them

from . import _C  # noqa: F401  registers the dropgrad:: ops
