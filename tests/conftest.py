import os

# JAX takes 75% of GPU memory at its first use unless told otherwise; torch kernels and
# subprocesses in the same session need it too.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
