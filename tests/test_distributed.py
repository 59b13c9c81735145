"""Multi-process training on JAX's distributed runtime, with real processes on 127.0.0.1 (gloo collectives).

The worker below is a small char-LM trainer built from library parts only (a GRU over
``run_stack``, truncated BPTT over B streams with the carry in the state, ``make_train_step`` on a mesh,
the harness's ``fit`` with a process-0 checkpointer): what the apps do, in one page. Each process builds
only its own rows of every batch (``process_rows``), so the carried state stays with its stream.

What is checked:
- 2 processes x 2 devices reach the loss and parameters of 1 process x 4 devices (float32, rtol 1e-6);
- a process killed with SIGKILL mid-run: the survivor exits non-zero with a one-line error within 60 s and
  the last checkpoint is intact; resuming with 2 processes ends bit-identical to the uninterrupted run,
  and resuming with 1 process of 4 devices reaches the same numbers (rtol 1e-6).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from rnn_jax import distributed
from rnn_jax.errors import UserError

WORKER = textwrap.dedent(
    """
    import json, os, signal, sys
    from rnn_jax import distributed as D

    out, steps, kill_at = D.initialize_from_argv(sys.argv[1:])
    steps, kill_at = int(steps), int(kill_at)

    import jax, jax.numpy as jnp, numpy as np, optax
    import rnn_jax as R
    from rnn_jax import checkpoint, train as T
    from rnn_jax.harness import FitOptions, fit

    V, H, B, W = 11, 5, 8, 6  # vocabulary, hidden, global batch (B streams), window
    corpus = np.tile(np.random.default_rng(0).integers(0, V, 13), 300).astype(np.int32)  # a learnable phrase
    starts = np.arange(B) * (len(corpus) // B)  # stream b reads its own strip of the corpus

    def loss_fn(params, carries, batch, key):
        x_BW, y_BW = batch
        xs = jax.nn.one_hot(x_BW, V, dtype=params["head"].dtype)
        xs = jnp.where(jax.random.bernoulli(key, 0.9, xs.shape), xs / 0.9, 0.0)  # input dropout: keys must agree
        carries, hs = R.run_stack(R.gru_cell, params["layers"], carries, xs, unroll=1)  # unroll 1: quick to compile
        logits = hs @ params["head"] + params["bias"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y_BW).mean()
        return loss, ({}, carries)

    mesh = T.make_mesh()
    rows = D.process_rows(B, mesh)

    class Streams:
        items_per_step = B * W

        def __call__(self, step):
            if step == kill_at and jax.process_index() == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            idx = starts[rows, None] + step * W + np.arange(W + 1)  # only this process's streams
            window = corpus[idx % len(corpus)]
            return window[:, :-1], window[:, 1:]

    k = jax.random.split(jax.random.key(0), 3)
    params = {"layers": [R.gru_init(k[0], V, H)],
              "head": 0.3 * jax.random.normal(k[2], (H, V)), "bias": jnp.zeros((V,))}
    opt = T.make_optimizer(3e-2, total_steps=steps, warmup_steps=2)
    state = T.init_state(params, opt, jax.random.key(3), carry=[jnp.zeros((B, H))])
    if checkpoint.latest(out):
        state, _ = checkpoint.restore(out, state)  # every process reads the same (global) state
    ck = D.MainProcessCheckpointer(checkpoint.Checkpointer(out))
    step = T.make_train_step(loss_fn, opt, mesh=mesh, has_carry=True)
    main = D.is_main_process()
    options = FitOptions(steps=steps, checkpoint_every=2, log_every=1, verbose=False, plot=False)

    def run():
        result = fit(state, step, Streams(), options, checkpointer=ck, out_dir=out if main else None)
        final = D.host_state(result.state)
        if main:
            record = {"params": [np.asarray(p).ravel().tolist() for p in jax.tree.leaves(final.params)],
                      "carry": [np.asarray(c).ravel().tolist() for c in final.carry],
                      "devices": jax.device_count(), "processes": jax.process_count()}
            with open(os.path.join(out, "final.json"), "w") as f:
                json.dump(record, f)

    sys.exit(D.run_command(run, prog="worker"))
    """
)

CHARLM_FLAGS = ["--hidden-size", "8", "--embed-size", "4", "--batch-size", "8", "--seq-len", "8", "--steps", "4",
                "--eval-every", "2", "--checkpoint-every", "2", "--samples", "0", "--eval-streams", "4",
                "--eval-window", "16", "--unroll", "1", "--warmup-steps", "1"]  # fmt: skip
SEQ2SEQ_FLAGS = ["--hidden-size", "8", "--embed-size", "4", "--batch-size", "8", "--steps", "4", "--eval-every", "2",
                 "--checkpoint-every", "2", "--eval-size", "8", "--warmup-steps", "1", "--unroll", "1"]  # fmt: skip
STEPS, KILL_AT = 8, 5  # checkpoints every 2 steps: the last one before the kill is step 4


def _env(devices):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _flags(port, n, i):
    return ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i)]


def _losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def _final(out):
    return json.loads((out / "final.json").read_text())


def _start(script, out, devices, kill_at=-1, flags=(), stderr=subprocess.STDOUT):
    argv = [sys.executable, str(script), str(out), str(STEPS), str(kill_at), *flags]
    return subprocess.Popen(argv, env=_env(devices), stdout=subprocess.PIPE, stderr=stderr, text=True)


def _finish(procs, timeout=300):
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All the runs, in two waves of processes running side by side (the checks below read their files).

    Wave 1: 1 process x 4 devices; 2 processes x 2 devices through ``rnn-jax launch``; 2 x 2 again, process 1
    killed with SIGKILL before step 6 (checkpoints every 2 steps). Wave 2, from that run's last checkpoint:
    resumed with 2 processes x 2 devices, and (a copy) with 1 process x 4 devices.
    """
    from rnn_jax import checkpoint

    root = tmp_path_factory.mktemp("distributed")
    script = root / "worker.py"
    script.write_text(WORKER)
    launch = [sys.executable, "-m", "rnn_jax.cli", "launch", "--processes", "2", "--devices-per-process", "2",
              "--", "python", str(script), str(root / "two"), str(STEPS), "-1"]  # fmt: skip
    port = distributed._free_port()
    wave = [subprocess.Popen(launch, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True),
            _start(script, root / "one", 4)]  # fmt: skip
    text = root / "text.txt"
    rng = np.random.default_rng(0)
    text.write_text(" ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat", "and", "ran"], 500)))
    charlm = ["charlm", "train", "--text", str(text), *CHARLM_FLAGS]
    wave += [subprocess.Popen([sys.executable, "-m", "rnn_jax.cli", "launch", "--processes", "2",
                               "--devices-per-process", "2", "--", *charlm, "--out", str(root / "lm2")],
                              env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True),
             subprocess.Popen([sys.executable, "-m", "rnn_jax.cli", *charlm, "--devices", "4", "--no-verbose",
                               "--out", str(root / "lm1")], env=_env(4), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)]  # fmt: skip
    pairs = root / "pairs.tsv"
    words = ["".join(rng.choice(list("abcdef"), int(n))) for n in rng.integers(2, 6, 120)]
    pairs.write_text("".join(f"{w}\t{w[::-1]}\n" for w in dict.fromkeys(words)))
    seq2seq = ["seq2seq", "train", "--pairs", str(pairs), *SEQ2SEQ_FLAGS]
    wave += [subprocess.Popen([sys.executable, "-m", "rnn_jax.cli", "launch", "--processes", "2",
                               "--devices-per-process", "2", "--", *seq2seq, "--out", str(root / "s2"),
                               "--no-verbose"],
                              env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True),
             subprocess.Popen([sys.executable, "-m", "rnn_jax.cli", *seq2seq, "--devices", "4", "--no-verbose",
                               "--out", str(root / "s1")], env=_env(4), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)]  # fmt: skip
    killed = [_start(script, root / "part", 2, KILL_AT, _flags(port, 2, i), subprocess.PIPE) for i in range(2)]
    killed_code, _ = _finish(killed[1:])
    t_killed = time.monotonic()
    survivor_code, survivor_out = _finish(killed[:1], timeout=120)
    survivor_s = time.monotonic() - t_killed
    codes, outputs = _finish(wave)
    assert codes == [0] * len(wave), "\n".join(o[0][-3000:] for o in outputs)

    resumable = root / "alone"
    resumable.mkdir()
    shutil.copy(checkpoint.latest(root / "part"), resumable / "latest.ckpt")
    step_at_kill = checkpoint.read_meta(root / "part")["step"]
    port = distributed._free_port()
    resumed = [_start(script, root / "part", 2, flags=_flags(port, 2, i)) for i in range(2)]
    resumed.append(_start(script, resumable, 4))
    resumed_codes, resumed_outputs = _finish(resumed)
    assert resumed_codes == [0, 0, 0], "\n".join(o[0][-2000:] for o in resumed_outputs)
    return {"root": root, "launch_stdout": outputs[0][0], "charlm_stdout": outputs[2][0],
            "killed_code": killed_code[0], "step_at_kill": step_at_kill,
            "survivor": (survivor_code[0], survivor_out[0][1], survivor_s)}  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_the_same_devices(runs):
    one, two = _final(runs["root"] / "one"), _final(runs["root"] / "two")
    assert (one["processes"], one["devices"]) == (1, 4) and (two["processes"], two["devices"]) == (2, 4)
    l1, l2 = _losses(runs["root"] / "one"), _losses(runs["root"] / "two")
    assert sorted(l1) == sorted(l2) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([l2[s] for s in sorted(l2)], [l1[s] for s in sorted(l1)], rtol=1e-6)
    for a, b in zip(two["params"] + two["carry"], one["params"] + one["carry"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert l1[STEPS] < l1[1]  # it trains


@pytest.mark.slow
def test_launch_prefixes_each_process_output(runs):
    lines = [line for line in runs["launch_stdout"].splitlines() if line.strip()]
    assert lines and all(line.startswith(("[p0] ", "[p1] ")) for line in lines)


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_one_line_within_60_s(runs):
    assert runs["killed_code"] == -signal.SIGKILL
    code, err, seconds = runs["survivor"]
    assert code == 1 and seconds < 60, err[-3000:]
    assert len(err.strip().splitlines()) == 1, err[-3000:]
    # Whichever sees it first: a collective that loses its peer, or the watchdog's beat going stale.
    assert re.match(r"(worker|rnn_jax.distributed): error: process 0 of 2: ", err), err
    assert "lost contact with another process" in err or "process 1 stopped responding" in err, err
    assert "the last checkpoint written is intact" in err
    assert runs["step_at_kill"] == 4  # the last checkpoint before the kill (at step 5), intact


@pytest.mark.slow
def test_resumed_with_two_processes_ends_bit_identical_to_the_uninterrupted_run(runs):
    root = runs["root"]
    resumed, full = _final(root / "part"), _final(root / "two")
    assert resumed["params"] == full["params"] and resumed["carry"] == full["carry"]
    assert all(_losses(root / "part")[s] == _losses(root / "two")[s] for s in range(5, STEPS + 1))


@pytest.mark.slow
def test_resumed_with_one_process_of_the_same_device_count_matches(runs):
    single, full = _final(runs["root"] / "alone"), _final(runs["root"] / "two")
    assert single["processes"] == 1 and single["devices"] == 4
    # The same numbers up to the all-reduce's summation order.
    for a, b in zip(single["params"] + single["carry"], full["params"] + full["carry"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert sorted(_losses(runs["root"] / "alone")) == list(range(5, STEPS + 1))


@pytest.mark.slow
def test_charlm_trainer_on_two_processes_equals_one_process_of_four_devices(runs):
    from rnn_jax.apps import charlm

    root = runs["root"]
    records = [[json.loads(line) for line in (root / d / "metrics.jsonl").read_text().splitlines()]
               for d in ("lm1", "lm2")]  # fmt: skip
    evals = [[(r["step"], r["val_loss"]) for r in rs if r["kind"] == "eval"] for rs in records]
    assert [s for s, _ in evals[0]] == [s for s, _ in evals[1]] == [0, 2, 4]
    np.testing.assert_allclose([v for _, v in evals[1]], [v for _, v in evals[0]], rtol=1e-6)
    train = [[r["loss"] for r in rs if r["kind"] == "train"] for rs in records]
    np.testing.assert_allclose(train[1], train[0], rtol=1e-6)
    one, two = charlm.load_model(str(root / "lm1"), "latest"), charlm.load_model(str(root / "lm2"), "latest")
    assert one.meta["step"] == two.meta["step"] == 4
    for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Process 0 alone prints: the summary line appears once, from [p0].
    summaries = [line for line in runs["charlm_stdout"].splitlines() if '"val_loss"' in line]
    assert len(summaries) == 1 and summaries[0].startswith("[p0] "), runs["charlm_stdout"][-3000:]


@pytest.mark.slow
def test_seq2seq_trainer_on_two_processes_equals_one_process_of_four_devices(runs):
    from rnn_jax.apps import seq2seq

    root = runs["root"]
    records = [[json.loads(line) for line in (root / d / "metrics.jsonl").read_text().splitlines()]
               for d in ("s1", "s2")]  # fmt: skip
    evals = [[(r["step"], r["val_loss"]) for r in rs if r["kind"] == "eval"] for rs in records]
    assert [s for s, _ in evals[0]] == [s for s, _ in evals[1]] and len(evals[0]) >= 2
    np.testing.assert_allclose([v for _, v in evals[1]], [v for _, v in evals[0]], rtol=1e-6)
    train = [[r["loss"] for r in rs if r["kind"] == "train"] for rs in records]
    assert train[0] and len(train[0]) == len(train[1])
    np.testing.assert_allclose(train[1], train[0], rtol=1e-6)
    one, two = seq2seq.load_model(str(root / "s1"), "latest"), seq2seq.load_model(str(root / "s2"), "latest")
    for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------
# The pieces, in this process (no runtime started)
# ---------------------------------------------------------------------------------------------------


def test_split_flags_takes_the_three_flags_out_before_a_double_dash():
    argv = ["train", "--coordinator", "h:1", "--steps", "3", "--num-processes=2", "--process-id", "1", "--", "-x"]
    rest, found = distributed.split_flags(argv)
    assert rest == ["train", "--steps", "3", "--", "-x"]
    assert found == {"coordinator": "h:1", "num_processes": 2, "process_id": 1}
    assert distributed.split_flags(["--", "--process-id", "1"]) == (["--", "--process-id", "1"], {})


@pytest.mark.parametrize(
    "argv, message",
    [(["--process-id"], "needs a value"), (["--num-processes", "two"], "must be an integer")],
)
def test_split_flags_refuses_bad_values(argv, message):
    with pytest.raises(UserError, match=message):
        distributed.split_flags(argv)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coordinator="nohost"), "HOST:PORT"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), "below --num-processes"),
        (dict(coordinator="h:1", num_processes=0, process_id=0), "num_processes must be an integer >= 1"),
    ],
)
def test_initialize_refuses_bad_arguments_before_starting_anything(kwargs, message):
    with pytest.raises(UserError, match=message):
        distributed.initialize(**kwargs)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, False),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, True),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, False),
        ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"}, True),
        ({"KUBERNETES_SERVICE_HOST": "k", "JOB_COMPLETION_INDEX": "0"}, True),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, True),
        ({"TPU_WORKER_HOSTNAMES": "w0"}, False),
        ({"JAX_COORDINATOR_ADDRESS": "h:1"}, True),
        ({"RNN_JAX_DISTRIBUTED": "1"}, True),
        ({"RNN_JAX_DISTRIBUTED": "0"}, False),
    ],
)
def test_cluster_detected_reads_the_environment(env, expected):
    assert distributed.cluster_detected(env) is expected


def test_one_process_builds_every_row_and_keeps_its_checkpointer():
    from rnn_jax import train as T

    mesh = T.make_mesh(1)
    assert distributed.process_rows(6, mesh) == slice(0, 6)
    batches = distributed.ProcessBatches(lambda k: (np.arange(6) + k, np.float32(0.5)), 6, mesh)
    rows, scalar = batches(2)
    np.testing.assert_array_equal(rows, np.arange(6) + 2)
    assert scalar == np.float32(0.5) and batches.items_per_step == 1
    sentinel = object()
    assert distributed.for_processes(sentinel) is sentinel
    assert distributed.reduce_metrics({"a": 1.5}) == {"a": 1.5}
    assert distributed.is_main_process()


def test_launch_stops_and_names_the_failing_process(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys, time\nif '1' == sys.argv[-1]:\n    sys.exit(3)\ntime.sleep(60)\n")
    argv = [sys.executable, "-m", "rnn_jax.cli", "launch", "--processes", "2", "--", "python", str(script)]
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and time.monotonic() - t0 < 50
    assert out.stderr.strip().splitlines()[-1] == (
        "rnn-jax launch: error: process 1 exited with status 3; stopping the 1 still running"
    )
