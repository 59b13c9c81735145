"""Data parallelism on 4 simulated CPU devices in one process: the sharded train step equals the one-device step.

Many processes: tests/test_distributed.py.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` only takes effect before JAX starts, so the
checks run in one fresh Python process; it reports numbers as JSON and the assertions are made here.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rnn_jax import train as training

CHILD = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    import rnn_jax as R
    from rnn_jax import train as training
    from rnn_jax.errors import UserError

    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == 4, jax.devices()
    V, H, B, W = 5, 7, 8, 9  # vocab, hidden, batch (2 per device), window

    def loss_fn(params, carry, batch, key):
        # Truncated BPTT on a vanilla char-LM: mean next-token cross-entropy over the batch, in float32.
        del key
        x_BW, y_BW = batch
        xs = jax.nn.one_hot(x_BW, V, dtype=params.W_xh.dtype)
        carry, logits = R.run(R.vanilla_cell, params, carry, xs)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y_BW).mean()
        return loss, ({}, carry)

    params = R.vanilla_init(jax.random.key(0), V, H, V)
    ids = jax.random.randint(jax.random.key(1), (B, W + 1), 0, V)
    batch = (ids[:, :-1], ids[:, 1:])
    carry0 = 0.1 * jax.random.normal(jax.random.key(2), (B, H))
    tx = optax.sgd(1.0)  # new params = params - grads: the update is the gradient itself

    def one_step(mesh, dtype=None):
        state = training.init_state(params, tx, jax.random.key(3), carry=carry0)
        step = training.make_train_step(loss_fn, tx, mesh=mesh, compute_dtype=dtype, has_carry=True)
        new, metrics = step(state, batch)
        grads = jax.tree.map(lambda a, b: np.asarray(a - b), state.params, new.params)
        return new, float(metrics["loss"]), grads

    mesh = training.make_mesh(4)
    out = {}
    for name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        single, loss1, g1 = one_step(None, dtype)
        sharded, loss4, g4 = one_step(mesh, dtype)
        out[name] = {
            "loss_single": loss1,
            "loss_sharded": loss4,
            "grad_max_abs": max(float(np.abs(a).max()) for a in jax.tree.leaves(g1)),
            "grad_max_diff": max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4))),
            "carry_max_diff": float(np.abs(np.asarray(single.carry) - np.asarray(sharded.carry)).max()),
            "params_dtype": str(sharded.params.W_hh.dtype),
        }
    out["carry_devices"] = len(sharded.carry.sharding.device_set)
    out["carry_shard_rows"] = sorted({s.data.shape[0] for s in sharded.carry.addressable_shards})
    out["params_replicated"] = bool(sharded.params.W_hh.sharding.is_fully_replicated)

    # A batch may hold scalars (per-batch settings such as seq2seq's teacher-forcing ratio): replicated.
    def scaled_loss(params, batch, key):
        del key
        xs = jax.nn.one_hot(batch["x"], V, dtype=params.W_xh.dtype)
        _, logits = R.run(R.vanilla_cell, params, None, xs)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["y"]).mean()
        return batch["scale"] * loss, {}

    scalar_batch = {"x": batch[0], "y": batch[1], "scale": np.float32(0.5)}
    fresh = training.init_state(params, tx, jax.random.key(3))
    out["scalar_leaf_losses"] = [
        float(training.make_train_step(scaled_loss, tx, mesh=m)(fresh, scalar_batch)[1]["loss"]) for m in (None, mesh)
    ]

    # Three AdamW steps with dropout noise (which must not depend on the sharding) and an aux metric.
    def noisy_loss(params, carry_B, batch, key):
        x_BI, y_B = batch
        keep_BI = jax.random.bernoulli(key, 0.8, x_BI.shape)
        h_B = jnp.tanh(carry_B + (jnp.where(keep_BI, x_BI, 0.0) @ params["w"]) + params["b"])
        loss = jnp.mean((h_B - y_B) ** 2)
        return loss, ({"h_mean": jnp.mean(h_B)}, h_B)

    k = jax.random.split(jax.random.key(4), 3)
    lin = {"w": jax.random.normal(k[0], (3,)), "b": jnp.zeros(())}
    lin_batch = (jax.random.normal(k[1], (B, 3)), jax.random.normal(k[2], (B,)))
    adam = training.make_optimizer(1e-2, total_steps=10, warmup_steps=0)
    s1 = s4 = training.init_state(lin, adam, jax.random.key(3), carry=jnp.zeros((B,)))
    one = training.make_train_step(noisy_loss, adam, has_carry=True)
    many = training.make_train_step(noisy_loss, adam, has_carry=True, mesh=mesh)
    for _ in range(3):
        s1, m1 = one(s1, lin_batch)
        s4, m4 = many(s4, lin_batch)
    out["adam"] = {
        "metrics": [[float(m[k]) for k in ("loss", "grad_norm", "h_mean")] for m in (m1, m4)],
        "params": [np.concatenate([np.ravel(x) for x in jax.tree.leaves(s.params)]).tolist() for s in (s1, s4)],
        "carry": [np.asarray(s.carry).tolist() for s in (s1, s4)],
        "steps": [int(s1.step), int(s4.step)],
    }
    try:
        training.make_mesh(5)
        out["too_many_devices_error"] = None
    except UserError as err:
        out["too_many_devices_error"] = str(err)

    state = training.init_state(params, tx, jax.random.key(3), carry=carry0[:6])
    step = training.make_train_step(loss_fn, tx, mesh=mesh, has_carry=True)
    try:
        step(state, (batch[0][:6], batch[1][:6]))
        out["indivisible_error"] = None
    except UserError as err:
        out["indivisible_error"] = str(err)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_one_sharded_step_equals_one_device_step(report, dtype, rtol):
    r = report[dtype]
    assert abs(r["loss_sharded"] - r["loss_single"]) <= rtol * abs(r["loss_single"])
    # bf16 keeps 8 significant bits: summing the batch in another order moves a gradient by ~1% of its scale.
    assert r["grad_max_diff"] <= rtol * r["grad_max_abs"], r
    assert r["carry_max_diff"] <= 10 * rtol, r
    assert r["params_dtype"] == "float32"  # bf16 compute leaves the master params in float32


@pytest.mark.slow
def test_batch_is_split_and_params_replicated(report):
    assert report["carry_devices"] == 4 and report["carry_shard_rows"] == [2]
    assert report["params_replicated"]


@pytest.mark.slow
def test_batch_not_divisible_by_devices_is_a_clear_error(report):
    message = report["indivisible_error"]
    assert message is not None, "a batch of 6 on 4 devices must be refused"
    assert "6" in message and "4 devices" in message


@pytest.mark.slow
def test_scalar_batch_leaves_are_replicated(report):
    single, sharded = report["scalar_leaf_losses"]
    assert abs(single - sharded) <= 1e-5 * abs(single)


@pytest.mark.slow
def test_adam_steps_with_dropout_on_the_mesh_equal_one_device(report):
    r = report["adam"]
    assert r["steps"] == [3, 3]
    np.testing.assert_allclose(r["metrics"][1], r["metrics"][0], rtol=1e-5)
    np.testing.assert_allclose(r["params"][1], r["params"][0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r["carry"][1], r["carry"][0], rtol=1e-6)


@pytest.mark.slow
def test_more_devices_than_visible_is_a_clear_error(report):
    assert "asked for 5 devices but only 4" in report["too_many_devices_error"]


def test_shard_batch_is_a_no_op_without_mesh():
    x = np.ones((5, 2))
    assert training.shard_batch(x, None) is x
