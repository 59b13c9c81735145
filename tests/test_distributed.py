"""Multi-process training on JAX's distributed runtime, with real processes on 127.0.0.1 (gloo collectives).

The worker below is a small char-LM trainer built from library parts only (a GRU over
``run_stack``, truncated BPTT over B streams with the carry in the state, ``make_train_step`` on a mesh,
the harness's ``fit`` with a process-0 checkpointer): what the apps do, in one page. Each process builds
only its own rows of every batch (``process_rows``), so the carried state stays with its stream.

What is checked:
- 2 processes x 2 devices reach the loss and parameters of 1 process x 4 devices (float32, rtol 1e-6; the
  seq2seq params rtol 1e-5: their gradient sums across processes in another order, and Adam carries it);
- a process killed with SIGKILL mid-run: the survivor exits non-zero with one line naming the last
  checkpoint's step and ``--resume``, and that checkpoint is intact; resuming with 2 processes ends
  bit-identical to the uninterrupted run, and resuming with 1 process of 4 devices reaches the same numbers
  (rtol 1e-6);
- a coordinator that never answers, a peer that never joins, a port in use: one line, exit 2;
- ``rnn-jax launch``: its header, SIGTERM and SIGHUP stop the children, the first process to fail is named.

No test measures time: each subprocess has a timeout that fails only on a hang.
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

# Its module-scoped fixtures train or compile once: under pytest-xdist the file stays on one worker.
pytestmark = pytest.mark.xdist_group("distributed")

WORKER = textwrap.dedent(
    """
    import json, os, signal, sys
    from rnn_jax import distributed

    out, steps, kill_at = distributed.initialize_from_argv(sys.argv[1:])
    steps, kill_at = int(steps), int(kill_at)

    import jax, jax.numpy as jnp, numpy as np, optax
    import rnn_jax as R
    from rnn_jax import checkpoint, train as training
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

    mesh = training.make_mesh()
    rows = distributed.process_rows(B, mesh)

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
    opt = training.make_optimizer(3e-2, total_steps=steps, warmup_steps=2)
    state = training.init_state(params, opt, jax.random.key(3), carry=[jnp.zeros((B, H))])
    if checkpoint.latest(out):
        state, _ = checkpoint.restore(out, state)  # every process reads the same (global) state
    ck = distributed.MainProcessCheckpointer(checkpoint.Checkpointer(out))
    step = training.make_train_step(loss_fn, opt, mesh=mesh, has_carry=True)
    main = distributed.is_main_process()
    options = FitOptions(steps=steps, checkpoint_every=2, log_every=1, verbose=False, plot=False)

    def run():
        result = fit(state, step, Streams(), options, checkpointer=ck, out_dir=out if main else None)
        final = distributed.host_state(result.state)
        if main:
            record = {"params": [np.asarray(p).ravel().tolist() for p in jax.tree.leaves(final.params)],
                      "carry": [np.asarray(c).ravel().tolist() for c in final.carry],
                      "devices": jax.device_count(), "processes": jax.process_count()}
            with open(os.path.join(out, "final.json"), "w") as f:
                json.dump(record, f)

    sys.exit(distributed.run_command(run, prog="worker"))
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
    survivor_code, survivor_out = _finish(killed[:1], timeout=120)
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
            "survivor": (survivor_code[0], survivor_out[0][1])}  # fmt: skip


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
def test_launch_prints_a_header_then_prefixes_each_process_output(runs):
    lines = [line for line in runs["launch_stdout"].splitlines() if line.strip()]
    header = [line for line in lines if line.startswith("rnn-jax launch: ")]
    assert header and header[0].startswith("rnn-jax launch: 2 processes x 2 CPU device(s) = 4 devices, coordinator")
    assert all(line.startswith(("[p0] ", "[p1] ")) for line in lines if line not in header)


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_one_line_saying_how_to_go_on(runs):
    assert runs["killed_code"] == -signal.SIGKILL
    code, err = runs["survivor"]
    assert code == 1, err[-3000:]
    assert len(err.strip().splitlines()) == 1, err[-3000:]
    # Whichever sees it first: a collective that loses its peer, or the watchdog's beat going stale.
    assert re.match(r"(worker|rnn_jax.distributed): error: process 0 of 2: ", err), err
    assert "lost contact with another process" in err or "process 1 stopped responding" in err, err
    assert "the last checkpoint (step 4, in " in err and "run the same command with --resume to go on" in err, err
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
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


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
    from rnn_jax import train as training

    mesh = training.make_mesh(1)
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
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "rnn-jax launch: error: process 1 exited with status 3, the first to fail; stopping the 1 still running"
    )


def test_launch_names_the_process_that_died_first_not_the_survivor(tmp_path):
    """Process 1 kills itself; process 0 notices at once (its socket to 1 closes) and exits 1 20 ms later."""
    script = tmp_path / "peer.py"
    script.write_text(PEER)
    argv = [sys.executable, "-m", "rnn_jax.cli", "launch", "--processes", "2", "--", "python", str(script)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("rnn-jax launch: error: process 1 was killed by SIGKILL, the first to fail")
    ), out.stderr


PEER = textwrap.dedent(
    """
    import os, signal, socket, sys, time
    port = int(sys.argv[sys.argv.index("--coordinator") + 1].rpartition(":")[2])
    if sys.argv[sys.argv.index("--process-id") + 1] == "0":
        with socket.create_server(("127.0.0.1", port)) as server:
            peer, _ = server.accept()
            peer.recv(1)  # returns when process 1 dies
        time.sleep(0.02)  # fail a moment later, as a survivor does (launch must still name process 1)
        sys.exit(1)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)

SLEEPER = "import os, sys, time\nopen(sys.argv[1] + '/' + str(os.getpid()), 'w').close()\ntime.sleep(120)\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_launch_stops_its_children(tmp_path, signum):
    script, pids = tmp_path / "sleep.py", tmp_path / "pids"
    script.write_text(SLEEPER)
    pids.mkdir()
    argv = [sys.executable, "-m", "rnn_jax.cli", "launch", "--processes", "2", "--", "python", str(script), str(pids)]
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # until both children are up (a hang fails at the loop's end)
            if len(list(pids.iterdir())) == 2:
                break
            time.sleep(0.05)
        children = [int(p.name) for p in pids.iterdir()]
        assert len(children) == 2
        launcher.send_signal(signum)
        _, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1] == f"rnn-jax launch: {name}: stopping the 2 process(es) still running"
    for _ in range(200):  # the children were waited for by launch; an orphan would stay alive
        if not any(_alive(pid) for pid in children):
            break
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children)


def _rnn_jax(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "rnn_jax.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))  # fmt: skip


def test_no_coordinator_and_a_peer_that_never_joins_end_in_one_line_within_the_timeout():
    """Process 1 with nothing at its address, and process 0 alone of 2: each ends after --connect-timeout."""
    nobody, alone = distributed._free_port(), distributed._free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "rnn_jax.cli", "hello", *_flags(port, 2, i), "--connect-timeout", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(1))
        for port, i in ((nobody, 1), (alone, 0))
    ]  # fmt: skip
    codes, outputs = _finish(procs, timeout=120)
    assert codes == [2, 2], outputs
    errs = [err.strip().splitlines() for _, err in outputs]
    assert errs[0] == [
        f"rnn_jax.distributed: error: process 1 of 2: nothing answered at 127.0.0.1:{nobody} within 1 s (is "
        "process 0 running, with that address?); --connect-timeout sets the wait"
    ]
    assert len(errs[1]) == 1 and errs[1][0].startswith(
        f"rnn_jax.distributed: error: process 0 of 2: not all 2 processes joined the coordinator at 127.0.0.1:{alone} "
        "within 1 s"
    )


def test_a_port_in_use_is_named_in_one_line(tmp_path):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        out = _rnn_jax("hello", *_flags(port, 2, 0), timeout=60)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [
            f"rnn-jax hello: error: port {port} is already in use on this machine, so process 0 cannot serve "
            "the coordinator there; choose another port (or stop the run that holds it)"
        ], out.stderr
        out = _rnn_jax("launch", "--port", str(port), "--", "hello", timeout=60)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [
            f"rnn-jax launch: error: port {port} is already in use on this machine, so process 0 cannot serve "
            "the coordinator there; choose another port (or stop the run that holds it)"
        ], out.stderr


def test_connect_timeout_must_be_positive_seconds():
    assert distributed.split_flags(["x", "--connect-timeout=2.5"]) == (["x"], {"initialization_timeout_s": 2.5})
    with pytest.raises(UserError, match="--connect-timeout must be seconds, got 'soon'"):
        distributed.split_flags(["--connect-timeout", "soon"])
    for value in (0.0, -1.0, float("inf")):
        with pytest.raises(UserError, match="--connect-timeout must be a positive number of seconds"):
            distributed.initialize("h:1", 2, 1, initialization_timeout_s=value)


def test_too_many_devices_says_how_many_are_visible():
    from rnn_jax.apps import charlm, seq2seq

    n = jax.device_count()
    visible = "only 1 is visible" if n == 1 else f"only {n} are visible"
    with pytest.raises(UserError, match=f"asked for {n + 2} devices but {visible}"):
        charlm.check_config(charlm.CharLMConfig(text="abc " * 100, devices=n + 2, batch_size=64))
    with pytest.raises(UserError, match=f"asked for {n + 2} devices but {visible}"):
        seq2seq.check_config(seq2seq.Config(devices=n + 2, batch_size=128))


def test_the_dead_peer_line_names_the_last_checkpoint_and_resume(tmp_path, monkeypatch):
    from rnn_jax import checkpoint
    from rnn_jax import train as training

    monkeypatch.setattr(distributed._LastCheckpoint, "directory", None)
    monkeypatch.setattr(distributed._LastCheckpoint, "step", None)
    assert "--resume" in distributed.resume_hint()
    ck = distributed.MainProcessCheckpointer(checkpoint.Checkpointer(tmp_path / "run"))
    assert distributed.resume_hint() == (
        f"this run wrote no checkpoint yet; run the same command again (with --resume to go on from {tmp_path / 'run'})"
    )
    state = training.init_state(
        {"w": jax.numpy.zeros(3)}, training.make_optimizer(1e-3, total_steps=10), jax.random.key(0)
    )
    ck.save(state._replace(step=state.step + 7))
    assert distributed.resume_hint() == (
        f"the last checkpoint (step 7, in {tmp_path / 'run'}) is intact; run the same command with --resume to go on"
    )
