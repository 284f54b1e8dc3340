"""What a provider is: one implementation of the ops, built on the arrays of one configuration.

A provider's method `<method>_<op>` returns the Call that performs the op; torch_providers and
jax_providers hold the implementations.
"""

import functools
import importlib

from .schema import Config

NEEDS_GPU = "needs a CUDA GPU, and this run had none"


def import_module(module: str):
    """The module, or Unavailable naming what is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise Unavailable(f"{module} cannot be imported ({error})") from None


def trinix_encoding(framework: str, method: str, config: Config, backend: str, **alibi_options):
    """(trinix.<framework>.<method>, its FastRoPEPositionEmbedding or FastALiBiPositionEmbedding
    for `config`); `alibi_options` go to the ALiBi module only."""
    module = import_module(f"trinix.{framework}.{method}")
    if method == "rope":
        return module, module.FastRoPEPositionEmbedding(config.head_dim, config.seq_len, backend=backend)
    return module, module.FastALiBiPositionEmbedding(config.heads, config.seq_len, backend=backend, **alibi_options)


class Unavailable(Exception):
    """A provider cannot run here; the message becomes the note of its rows."""


class Inputs:
    """The arrays of one configuration, each made on first use (so what a row skips for
    size is never allocated) and shared by the providers of one framework."""

    def __init__(self, config: Config):
        self.config = config

    def _randn(self, *shape):
        raise NotImplementedError

    @functools.cached_property
    def q(self):
        c = self.config
        return self._randn(c.batch, c.seq_len, c.heads, c.head_dim)

    @functools.cached_property
    def k(self):
        return self._randn(*self.q.shape)

    @functools.cached_property
    def grads(self):
        """Cotangents of rotated q and k."""
        return self._randn(*self.q.shape), self._randn(*self.k.shape)

    @functools.cached_property
    def scores(self):
        return self.new_scores()

    def new_scores(self):
        """Scores of its own, for a call that consumes them."""
        c = self.config
        return self._randn(c.batch, c.heads, c.seq_len, c.seq_len)


class Provider:
    """One implementation of the ops. A method named `<method>_<op>` returns the Call that
    performs the op on the inputs; without one, the row has ms null and the note in
    `missing`. The constructor raises Unavailable when the provider cannot run `method` here."""

    name = ""
    framework = "torch"
    materialises_bias = False
    missing: dict[str, str] = {}
    notes: dict[str, str] = {}  # "<method>_<op>": what the row measures, where not plain

    def __init__(self, x: Inputs, method: str):
        self.x, self.config = x, x.config
