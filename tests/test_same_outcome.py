"""The torch and JAX bindings, given the same input, valid or not, have the same outcome: equal
results within tolerance, or the same exception type with the same argument named.

hypothesis draws one call of a public function and its arguments as NumPy arrays and Python
values, sometimes with one fault from a list of known ones; each framework gets them converted.
The framework-op backends ("torch", "xla") run every example; Triton's interpreter a few.
"""

import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

import trinix.jax
import trinix.torch
from trinix import reference as ref
from trinix.alibi import alibi_slopes as host_slopes

FALLBACKS = {"torch": "torch", "jax": "xla"}
INTERPRET = {"torch": "interpret", "jax": "interpret"}


CONVERT = {"torch": lambda x: torch.from_numpy(x.copy()) if isinstance(x, np.ndarray) else x,
           "jax": lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x}
MODULES = {"torch": trinix.torch, "jax": trinix.jax}


@st.composite
def rope_calls(draw):
    """(function name, args, kwargs, the argument a fault names or None)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    layout = draw(st.sampled_from(["bshd", "bhsd", "thd"]))
    batch, seq, heads_q, heads_k = (draw(st.integers(1, n)) for n in (2, 5, 3, 2))
    head_dim = draw(st.sampled_from([4, 8]))
    rotary_dim = draw(st.sampled_from([head_dim, head_dim // 2])) if head_dim > 4 else head_dim
    lengths = [draw(st.integers(0, seq)) for _ in range(batch)]

    def heads(n):
        shape = {"bshd": (batch, seq, n, head_dim), "bhsd": (batch, n, seq, head_dim),
                 "thd": (sum(lengths), n, head_dim)}[layout]
        return rng.standard_normal(shape).astype(np.float32)

    q, k = heads(heads_q), heads(heads_k)
    kwargs = dict(layout=layout, interleaved=draw(st.booleans()))
    if layout == "thd":
        kwargs["cu_seqlens"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        kwargs["max_seqlen"] = draw(st.sampled_from([None, max(lengths), np.int64(max(lengths))]))
    table = draw(st.booleans())
    rows = 7
    if table:
        cos, sin = ref.rope_cos_sin(np.arange(rows), ref.rope_inv_freq(rotary_dim), interleaved=kwargs["interleaved"])
        function, args = "apply_rotary_pos_emb", (q, k, cos.astype(np.float32), sin.astype(np.float32))
        if layout != "thd" and draw(st.booleans()):
            kwargs["position_ids"] = rng.integers(0, rows, (batch, seq)).astype(np.int32)
    else:
        function, args = "rope_rotate", (q, k, ref.rope_inv_freq(rotary_dim))
        offset_kind = draw(st.sampled_from(["int", "0-d", "per-sequence"]))
        offset = draw(st.integers(-2, 5))
        kwargs["offset"] = {"int": offset, "0-d": np.array(offset, np.int32),
                            "per-sequence": rng.integers(0, 5, batch).astype(np.int32)}[offset_kind]
    faults = {
        "q": lambda: (args[0].astype(np.int32), *args[1:]),
        "layout": lambda: kwargs.update(layout="sbhd"),
        "head_dim": lambda: (args[0], args[1][..., :-2], *args[2:]),
    }
    if table and layout != "thd":
        faults["position_ids"] = lambda: kwargs.update(position_ids=np.full((batch, seq), rows, np.int32))
    if not table:
        faults["offset"] = lambda: kwargs.update(offset=1.5)
    if layout == "thd":
        faults["max_seqlen"] = lambda: kwargs.update(max_seqlen=2.0)
        faults["cu_seqlens"] = lambda: kwargs.update(cu_seqlens=kwargs["cu_seqlens"][::-1].copy())
    fault = draw(st.sampled_from([None, None, *faults]))
    if fault:
        args = faults[fault]() or args
    return function, args, kwargs, {"head_dim": "head_dim"}.get(fault, fault)


@st.composite
def alibi_calls(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    batch, heads, seqlen_q, seqlen_k = (draw(st.integers(1, n)) for n in (2, 4, 6, 9))
    slopes = host_slopes(heads).astype(np.float32)
    q_offset = draw(st.sampled_from([None, 0, 3, -2]))
    kwargs = dict(causal=draw(st.booleans()), q_offset=q_offset)
    function = draw(st.sampled_from(["alibi_bias", "alibi_add", "alibi_softmax", "alibi_slopes"]))
    scores = rng.standard_normal((batch, heads, seqlen_q, seqlen_k)).astype(np.float32)
    faults = {"q_offset": lambda: kwargs.update(q_offset=1.5)}
    if function == "alibi_slopes":
        args, kwargs = (heads,), dict(max_bias=draw(st.sampled_from([8.0, 4.0])))
        faults = {"num_heads": lambda: (0,), "max_bias": lambda: kwargs.update(max_bias=float("inf"))}
    elif function == "alibi_bias":
        args = (slopes, seqlen_q, seqlen_k)
        faults |= {"seq_len": lambda: (slopes, -1, seqlen_k), "slopes": lambda: (slopes[None], seqlen_q)}
    else:
        args = (scores, slopes)
        faults |= {"scores": lambda: (scores[0], slopes), "slopes": lambda: (scores, slopes[:-1] if heads > 1 else
                                                                              slopes.astype(np.int32))}
        if function == "alibi_softmax":
            kwargs["scale"] = draw(st.sampled_from([1.0, 0.25]))
            faults["scale"] = lambda: kwargs.update(scale=float("nan"))
    fault = draw(st.sampled_from([None, None, *faults]))
    if fault:
        args = faults[fault]() or args
    return function, args, kwargs, fault


def _outcome(framework, backend, function, args, kwargs):
    convert = CONVERT[framework]
    try:
        out = getattr(MODULES[framework], function)(*map(convert, args), backend=backend,
                                                    **{key: convert(value) for key, value in kwargs.items()})
    except (TypeError, ValueError) as error:
        return error
    outputs = out if isinstance(out, tuple) else (out,)
    return [np.asarray(x.detach() if isinstance(x, torch.Tensor) else x, dtype=np.float64) for x in outputs]


def _check_same_outcome(call, backends):
    function, args, kwargs, fault = call
    note(f"{function} fault={fault} kwargs={kwargs}")
    outcomes = {framework: _outcome(framework, backend, function, args, kwargs)
                for framework, backend in backends.items()}
    torch_outcome, jax_outcome = outcomes["torch"], outcomes["jax"]
    event(f"{function}: {type(torch_outcome).__name__} / {type(jax_outcome).__name__}")
    if isinstance(torch_outcome, Exception) or isinstance(jax_outcome, Exception):
        assert type(torch_outcome) is type(jax_outcome), outcomes
        if fault is not None:
            for error in (torch_outcome, jax_outcome):
                assert re.search(rf"\b{fault}\b", str(error)), (fault, outcomes)
        return
    assert fault is None, f"{fault} was not refused"
    assert len(torch_outcome) == len(jax_outcome)
    for a, b in zip(torch_outcome, jax_outcome):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@given(call=st.one_of(rope_calls(), alibi_calls()))
def test_same_outcome_on_the_framework_ops(call):
    _check_same_outcome(call, FALLBACKS)


@settings(max_examples=6)
@given(call=st.one_of(rope_calls(), alibi_calls()))
def test_same_outcome_on_the_interpreted_kernel(call):
    _check_same_outcome(call, INTERPRET)


@pytest.mark.parametrize("offset", [np.array(3, np.int32), np.array(-1, np.int64)])
def test_a_0d_offset_is_an_int(offset):
    q, k = np.random.default_rng(0).standard_normal((2, 2, 5, 3, 8)).astype(np.float32)
    inv_freq = ref.rope_inv_freq(8)
    for framework, module in MODULES.items():
        convert = CONVERT[framework]
        by_array = module.rope_rotate(convert(q), convert(k), inv_freq, offset=convert(offset))
        by_int = module.rope_rotate(convert(q), convert(k), inv_freq, offset=int(offset))
        for a, b in zip(by_array, by_int):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
