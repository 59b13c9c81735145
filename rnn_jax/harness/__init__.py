"""The trainer harness: everything an application needs besides its model, its data and its metrics.

An application (``rnn_jax/apps/charlm/`` is the worked example) is built from these parts:

1. **Config** (:mod:`~rnn_jax.harness.config`, :mod:`~rnn_jax.harness.common`): a frozen dataclass whose
   fields are :func:`field` / :func:`shared_field` (canonical names shared by every app: ``hidden_size``,
   ``batch_size``, ``learning_rate``, ``clip_norm``, ``steps``, ``minutes``, ``unroll``, ``impl``...).
   The command line is generated from it (:func:`add_config_arguments`, :func:`config_from_args`), the
   experiment scripts use ``key=value`` / ``--config FILE`` (:func:`config_from_argv`), and
   :func:`check_config` validates the canonical fields and fills in the one default budget.
2. **Run directory** (:mod:`~rnn_jax.harness.rundir`): validate, then :func:`prepare` (the first write),
   :func:`restore_latest` to resume, :func:`read_run` / :func:`load_params` to load a trained model;
   checkpoints carry :func:`run_meta`.
3. **Batches**: a :class:`Batcher` (``batches(step) -> batch``, ``items_per_step``), a pure function of
   the step so that resuming is exact.
4. **Training**: :func:`rnn_jax.train.make_train_step` for the step, then :func:`fit` with
   :class:`FitOptions` (:func:`fit_options` reads them from the config), an ``evaluate(state) -> dict``
   and a :class:`~rnn_jax.checkpoint.Checkpointer`. It returns a :class:`FitResult`.
5. **Figures** (:mod:`~rnn_jax.harness.plots`): :func:`pyplot`, :func:`figure`, :func:`save`, :func:`loss_curve`.

A sketch of a trainer::

    def train(cfg):
        cfg = check_config(cfg)                                  # nothing written on a bad config
        data = load_my_data(cfg)                                 # nor on bad data
        out = prepare(cfg.out, resume=cfg.resume)
        state = init_state(init_params(cfg), make_optimizer(...), key)
        if cfg.resume:
            state, _ = restore_latest(out, state)
        step = make_train_step(loss_fn, optimizer, compute_dtype=compute_dtype(cfg.dtype))
        ckpt = Checkpointer(out, run_meta("myapp", cfg))
        return fit(state, step, MyBatches(data), fit_options(cfg), evaluate=evaluate, checkpointer=ckpt, out_dir=out)
"""

from rnn_jax.harness.common import (
    DEFAULT_MINUTES,
    DTYPES,
    check_config,
    check_fits,
    check_int,
    check_number,
    compute_dtype,
    init_cell,
    shared_field,
)
from rnn_jax.harness.config import (
    add_config_arguments,
    config_from_args,
    config_from_argv,
    config_from_overrides,
    field,
    migrate_config,
    replace_config,
)
from rnn_jax.harness.loop import (
    Batcher,
    BestKeeper,
    Budget,
    EvalHook,
    FitOptions,
    FitResult,
    Sink,
    fit,
    fit_options,
    resumed_best,
)
from rnn_jax.harness.plots import figure, loss_curve, pyplot, save
from rnn_jax.harness.rundir import (
    RunInfo,
    check_resumable,
    load_params,
    lock,
    prepare,
    read_run,
    release,
    restore_latest,
    resume_meta,
    resumed_config,
    run_meta,
    stored_config,
)

__all__ = [
    "DEFAULT_MINUTES",
    "DTYPES",
    "Batcher",
    "BestKeeper",
    "Budget",
    "EvalHook",
    "FitOptions",
    "FitResult",
    "RunInfo",
    "Sink",
    "add_config_arguments",
    "check_config",
    "check_fits",
    "check_int",
    "check_number",
    "check_resumable",
    "compute_dtype",
    "config_from_args",
    "config_from_argv",
    "config_from_overrides",
    "field",
    "figure",
    "fit",
    "fit_options",
    "init_cell",
    "lock",
    "load_params",
    "loss_curve",
    "migrate_config",
    "prepare",
    "pyplot",
    "read_run",
    "release",
    "replace_config",
    "restore_latest",
    "resume_meta",
    "resumed_best",
    "resumed_config",
    "run_meta",
    "save",
    "shared_field",
    "stored_config",
]
