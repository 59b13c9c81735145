"""The table of implementations: what run accepts, the listing, refusals and unknown names."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as R
from rnn_jax import kernels, plan
from rnn_jax.kernels import registry
from rnn_jax.scan import IMPLS

B, T, I, H = 3, 7, 4, 5


def test_run_accepts_exactly_auto_and_the_table():
    assert IMPLS == kernels.IMPLS == ("auto", *registry.TABLE)
    assert set(registry.TABLE) >= {"scan", "custom_jvp", "pallas", "native", "cudnn"}
    for name, impl in registry.TABLE.items():
        assert impl.name == name and callable(getattr(impl.load(), impl.run_fn))
        assert callable(impl.load().unsupported_reason) and callable(impl.load().available)


def test_listing_names_every_impl_and_why_it_cannot_run():
    here = R.available_impls()
    assert set(here) == set(registry.TABLE) and here["scan"] is None and here["custom_jvp"] is None
    assert R.available_impls("cpu")["pallas"] is None  # interpret mode
    tpu = R.available_impls("tpu")
    assert tpu["scan"] is None and "not on tpu" in tpu["pallas"]
    assert registry.platform_name("cuda") == "cuda" and registry.platform_name(None) == jax.default_backend()


def test_an_entry_that_does_not_import_is_listed_with_the_reason(monkeypatch):
    broken = registry.Impl("broken", "rnn_jax.kernels.no_such_module", "run_broken")
    monkeypatch.setitem(registry.TABLE, "broken", broken)
    assert "rnn_jax.kernels.no_such_module did not import" in R.available_impls()["broken"]


def test_a_kernel_entry_added_to_the_table_runs_through_run(monkeypatch):
    """One table entry with the kernel interface (run_X(cell, params, carry_N, xs_TNI, lengths_N, *, reverse))
    is enough for run(impl=name); here it wraps the Pallas kernel under another name."""
    entry = dataclasses.replace(registry.TABLE["pallas"], name="other")
    monkeypatch.setitem(registry.TABLE, "other", entry)
    params = R.vanilla_init(jax.random.key(0), I, H, 6)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    lengths = jnp.array([7, 3, 0])
    got = R.run(R.vanilla_cell, params, None, xs, lengths=lengths, impl="other")
    want = R.run(R.vanilla_cell, params, None, xs, lengths=lengths, impl="scan")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


@pytest.mark.parametrize(
    "impl, cell, kw, reason",
    [
        ("custom_jvp", R.lstm_cell, {}, "it runs the vanilla cell only, got the lstm cell"),
        ("custom_jvp", R.vanilla_cell, dict(reverse=True), "it takes no reverse \\(got reverse=True\\)"),
        ("pallas", R.vanilla_cell, dict(return_carries=True), "return_carries is not supported by the kernel"),
    ],
)
def test_a_refusal_names_the_reason_and_impl_scan(impl, cell, kw, reason):
    params = R.lstm_init(jax.random.key(0), I, H) if cell is R.lstm_cell else R.vanilla_init(jax.random.key(0), I, H, 6)
    with pytest.raises(R.UserError, match=f"impl='{impl}' cannot run this call: {reason}; use impl='scan'"):
        R.run(cell, params, None, jnp.ones((B, T, I)), impl=impl, **kw)


def test_an_unknown_impl_lists_the_table():
    params = R.vanilla_init(jax.random.key(0), I, H, 6)
    with pytest.raises(
        R.UserError, match=r"impl must be one of \('auto', 'scan', 'custom_jvp', 'pallas', 'native', 'cudnn'\), got 'x'"
    ):
        R.run(R.vanilla_cell, params, None, jnp.ones((B, T, I)), impl="x")


def test_a_plan_that_no_platform_chooses_has_no_switch():
    params = R.vanilla_init(jax.random.key(0), I, H, 6)
    carry = jax.ShapeDtypeStruct((B, H), jnp.float32)
    assert plan.platform_free(R.vanilla_cell, carry, impl="custom_jvp")
    assert plan.platform_free(R.lstm_cell, carry, impl="scan", hoist=True, unroll=2)
    assert not plan.platform_free(R.lstm_cell, carry, impl="scan", unroll=2)  # hoist is chosen per platform
    assert not plan.platform_free(R.vanilla_cell, carry, impl="auto")
    wide = jax.ShapeDtypeStruct((B, 100), jnp.float32)  # above CPU_SMALL_STATE: CPU saves pre-activations
    assert not plan.platform_free(R.lstm_cell, wide, impl="scan", hoist=True, unroll=2)
    jaxpr = jax.make_jaxpr(lambda p, x: R.run(R.vanilla_cell, p, None, x, impl="custom_jvp"))(
        params, jnp.ones((B, T, I))
    )
    assert "platform_index" not in str(jaxpr)
