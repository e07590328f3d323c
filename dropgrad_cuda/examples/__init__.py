"""A runnable few-shot example: ``python -m dropgrad_cuda.examples.few_shot --help``."""
