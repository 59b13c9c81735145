"""The fit loop, in parts that each fit on a screen: budget, logging sink, evaluation hook, best-keeping.

An application hands :func:`fit` its state, its jitted ``train_step`` (:func:`rnn_jax.train.make_train_step`),
a :class:`Batcher` and a :class:`FitOptions`; optionally an ``evaluate(state) -> dict`` and a
:class:`~rnn_jax.checkpoint.Checkpointer`::

    result = fit(state, train_step, batcher, fit_options(cfg), evaluate=evaluate,
                 checkpointer=Checkpointer(out, meta), out_dir=out)

The parts, each usable alone:

- :class:`Budget`: ``steps``, or ``minutes`` of wall clock; with minutes, the cosine schedule's end is
  re-estimated from the measured speed (:func:`rnn_jax.train.set_total_steps`), paying for evaluations.
- :class:`Sink`: ``metrics.jsonl`` (one JSON record per log interval and per evaluation, appended) and a
  tqdm progress bar with evaluation output on stderr, both silent with ``verbose=False`` (the file is
  still written).
- :class:`EvalHook`: runs ``evaluate``, times it, prints its strings (samples) and numbers, logs the record.
- :class:`BestKeeper`: keeps ``best.ckpt`` whenever ``best_metric`` improves; a resumed run starts from the
  best so far (:func:`resumed_best`, read from its ``best.ckpt``), so a worse model never replaces it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from rnn_jax.errors import UserError
from rnn_jax.train import TrainingDiverged, TrainState, set_total_steps

__all__ = [
    "Batcher",
    "FitOptions",
    "FitResult",
    "Budget",
    "Sink",
    "EvalHook",
    "BestKeeper",
    "fit",
    "fit_options",
    "resumed_best",
    "divergence_message",
]


@runtime_checkable
class Batcher(Protocol):
    """What every trainer's batches follow: a pure function of the step (the data cursor), so a resumed
    run sees exactly the batches an uninterrupted one would, and the items one batch holds (for speed)."""

    items_per_step: int

    def __call__(self, step: int) -> Any: ...


class FitOptions(NamedTuple):
    """How :func:`fit` runs. Exactly one of ``steps`` / ``minutes`` is the budget."""

    steps: int | None = None  # the total step count, resumed steps included
    minutes: float | None = None  # wall clock, compilation and evaluation included
    eval_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 50
    best_metric: str = "val_loss"  # lower is better
    item_name: str = "items"  # "chars": the speed is logged as chars_per_s
    verbose: bool = True
    plot: bool = True  # loss.png in out_dir at the end


def fit_options(cfg, **overrides) -> FitOptions:
    """:class:`FitOptions` from a config's canonical fields (``steps``, ``minutes``, ``eval_every``,
    ``checkpoint_every``, ``verbose``), then ``overrides``."""
    names = ("steps", "minutes", "eval_every", "checkpoint_every", "verbose")
    return FitOptions(**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)}, **overrides)


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      state: the final state.
      steps: the step reached (``int(state.step)``).
      elapsed_s: wall-clock seconds spent in :func:`fit`.
      items_per_s: training items per second of training time (no compile, no evaluation).
      last_eval: the final model's evaluation (empty without ``evaluate``).
      best_eval: the best evaluation seen by this call (by ``best_metric``), or ``None``.
    """

    state: TrainState
    steps: int
    elapsed_s: float
    items_per_s: float
    last_eval: dict
    best_eval: dict | None


def _check_options(options: FitOptions):
    steps, minutes = options.steps, options.minutes
    if (steps is None) == (minutes is None):
        raise UserError("give exactly one budget: steps or minutes")
    if steps is not None and (not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1):
        raise UserError(f"steps must be a positive integer, got {steps!r}")
    if minutes is not None and not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise UserError(f"minutes must be a positive number, got {minutes!r}")
    for name in ("eval_every", "checkpoint_every", "log_every"):
        value = getattr(options, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------------------------------


class Budget:
    """The step to stop at (``target``), fixed by ``steps`` or re-estimated from the clock with ``minutes``.

    Speed is measured on training time alone (no evaluation, no checkpoint), after the first, compiling,
    step of the call. With a time budget the steps that fit are ``(time left - one evaluation) /
    (seconds per step + an evaluation's seconds / eval_every)``, estimated after 5 timed steps and every
    ``log_every`` steps.
    """

    def __init__(self, options: FitOptions, first_step: int, evaluates: bool):
        self.options, self.first_step, self.evaluates = options, first_step, evaluates
        self.start = time.perf_counter()
        self.deadline = self.start + 60.0 * options.minutes if options.minutes is not None else None
        self.target = options.steps if options.steps is not None else first_step + 10**9
        self.train_seconds, self.timed_steps = 0.0, 0

    def begin(self, state: TrainState) -> TrainState:
        """A fresh time-budgeted run starts with its schedule's end far away (a resumed one keeps its own)."""
        if self.deadline is not None and self.first_step == 0:
            state = state._replace(opt_state=set_total_steps(state.opt_state, self.target))
        return state

    def out_of_time(self, eval_seconds: float) -> bool:
        """Whether another step would leave no time for the final evaluation."""
        return self.deadline is not None and time.perf_counter() + eval_seconds >= self.deadline

    def record(self, step: int, seconds: float) -> None:
        """Count a training step's duration (the first step of the call compiles: not counted)."""
        if step > self.first_step:
            self.train_seconds, self.timed_steps = self.train_seconds + seconds, self.timed_steps + 1

    def reestimate(self, state: TrainState, step: int, eval_seconds: float) -> TrainState:
        """With a time budget, move ``target`` and the schedule's end to the steps that still fit."""
        if self.deadline is None or not self.timed_steps:
            return state
        if self.timed_steps != 5 and step % self.options.log_every:
            return state
        per_step = self.train_seconds / self.timed_steps
        per_step += eval_seconds / self.options.eval_every if self.evaluates else 0.0
        remaining = self.deadline - time.perf_counter() - eval_seconds
        self.target = step + max(int(remaining / per_step), 1)
        return state._replace(opt_state=set_total_steps(state.opt_state, self.target))

    def items_per_s(self, items_per_step: int) -> float:
        return self.timed_steps * items_per_step / self.train_seconds if self.train_seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------------
# Logging sink
# ---------------------------------------------------------------------------------------------------


def _to_python(value):
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    arr = np.asarray(value)
    return arr.item() if arr.ndim == 0 else arr.tolist()


class Sink:
    """Where a run reports: ``out_dir/metrics.jsonl`` (appended; nothing without ``out_dir``) and, when
    ``verbose``, a progress bar and messages on stderr."""

    def __init__(self, out_dir: str | os.PathLike | None, verbose: bool, total: int | None, initial: int):
        from tqdm.auto import tqdm

        self.path = Path(out_dir) / "metrics.jsonl" if out_dir is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.verbose = verbose
        self.bar = tqdm(total=total, initial=initial, disable=not verbose, file=sys.stderr, dynamic_ncols=True,
                        mininterval=0.5, unit="step")  # fmt: skip

    def log(self, record: Mapping) -> None:
        """Append one JSON record to ``metrics.jsonl`` (a failed write, a full disk, is a :class:`UserError`)."""
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({k: _to_python(v) for k, v in record.items()}) + "\n")
            except OSError as err:
                raise UserError(f"cannot write {self.path}: {err.strerror or err}; the checkpoints are intact "
                                "(free space or give another directory, then resume)") from None  # fmt: skip

    def truncate(self, step: int) -> None:
        """Resuming at ``step``: drop the records of an earlier run past it (and its evaluation at ``step``,
        which the resumed run repeats, and its summary), so that no step is recorded twice."""
        if self.path is None or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a kill: drop it
                continue
            at = record.get("step") if isinstance(record, dict) else None
            if isinstance(at, int) and (at < step or (at == step and record.get("kind") == "train")):
                kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {self.path}: {err.strerror or err}") from None

    def say(self, text: str) -> None:
        """A message on stderr (above the bar); nothing when not verbose."""
        if self.verbose:
            self.bar.write(text, file=sys.stderr)

    def advance(self, total: int | None, **postfix) -> None:
        self.bar.total = total
        self.bar.update(1)
        if postfix:
            self.bar.set_postfix(**postfix)

    def close(self) -> None:
        self.bar.close()


class _TrainLog:
    """The mean training loss and the speed over one log interval."""

    def __init__(self, item_name: str, items_per_step: int):
        self.key, self.items_per_step = f"{item_name}_per_s", items_per_step
        self.loss_sum, self.n, self.seconds, self.timed = 0.0, 0, 0.0, 0

    def add(self, loss: float, seconds: float | None) -> None:
        self.loss_sum, self.n = self.loss_sum + loss, self.n + 1
        if seconds is not None:
            self.seconds, self.timed = self.seconds + seconds, self.timed + 1

    def flush(self, step: int, grad_norm: float, elapsed: float) -> dict:
        rate = self.timed / self.seconds * self.items_per_step if self.seconds > 0 else float("nan")
        record = {"kind": "train", "step": step, "loss": self.loss_sum / max(self.n, 1), "grad_norm": grad_norm,
                  self.key: rate, "elapsed_s": elapsed}  # fmt: skip
        self.loss_sum, self.n, self.seconds, self.timed = 0.0, 0, 0.0, 0
        return record


# ---------------------------------------------------------------------------------------------------
# Best-keeping, divergence, evaluation
# ---------------------------------------------------------------------------------------------------


class BestKeeper:
    """The best evaluation so far by ``metric`` (lower is better), saved as ``best`` by ``checkpointer``."""

    def __init__(self, metric: str, checkpointer=None, best: dict | None = None):
        self.metric, self.checkpointer = metric, checkpointer
        self.best: dict | None = best  # a resumed run's best so far (``resumed_best``)
        self.saved_step: int | None = best["step"] if best is not None else None

    def offer(self, state: TrainState, result: dict) -> bool:
        """Keep ``result`` (and save ``state`` as best) if its metric beats the best so far."""
        value = result.get(self.metric)
        if value is None or (self.best is not None and not value < self.best[self.metric]):
            return False
        self.best = result
        if self.checkpointer is not None:
            numbers = {k: v for k, v in result.items() if not isinstance(v, str)}
            self.checkpointer.save(state, "best", {"metrics": numbers})
            self.saved_step = int(state.step)
        return True


def resumed_best(checkpointer, metric: str, first_step: int) -> dict | None:
    """The best evaluation so far of a run resumed at ``first_step`` (> 0): ``{"step", metric, ...}`` from the
    meta of its ``best.ckpt``, or ``None`` (a fresh run, no best yet, or a best of another metric). In a
    multi-process run process 0 reads it and the others receive it, so that all decide alike."""
    directory = getattr(checkpointer, "directory", None)
    best = None
    if first_step > 0 and directory is not None and _is_writer():
        path = Path(directory) / "best.ckpt"
        if path.is_file():
            from rnn_jax import checkpoint

            meta = checkpoint.read_meta(path)  # a damaged best.ckpt says so here
            metrics = meta.get("metrics", {})
            if isinstance(metrics.get(metric), (int, float)) and isinstance(meta.get("step"), int):
                best = {**metrics, "step": meta["step"]}
    return _shared(best, metric)


def _is_writer() -> bool:
    import jax

    return jax.process_index() == 0


def _shared(best: dict | None, metric: str) -> dict | None:
    """Process 0's ``best`` in every process (its metric and step; the identity in one process)."""
    import jax

    if jax.process_count() == 1:
        return best
    from jax.experimental import multihost_utils

    sent = np.asarray([best[metric], best["step"]] if best is not None else [np.nan, -1], np.float64)
    value, step = np.asarray(multihost_utils.broadcast_one_to_all(sent)).tolist()
    if _is_writer():
        return best
    return {metric: value, "step": int(step)} if step >= 0 else None


def divergence_message(step: int, what: str, checkpointer=None, keeper: BestKeeper | None = None) -> str:
    """Where the run stopped, why, and which checkpoints are intact (``latest.ckpt``, ``best.ckpt``)."""
    intact = []
    directory = Path(getattr(checkpointer, "directory", None) or ".")
    has_dir = getattr(checkpointer, "directory", None) is not None
    latest_step = getattr(checkpointer, "last_saved_step", None)
    if latest_step is not None:
        intact.append(f"the last good checkpoint (step {latest_step}) is intact in {directory / 'latest.ckpt'}")
    elif has_dir and (directory / "latest.ckpt").is_file():
        intact.append(f"the last good checkpoint, from an earlier run, is intact in {directory / 'latest.ckpt'}")
    if keeper is not None and keeper.saved_step is not None:
        value = keeper.best[keeper.metric]
        intact.append(f"the best (step {keeper.saved_step}, {keeper.metric} {value:.4f}) in {directory / 'best.ckpt'}")
    elif has_dir and (directory / "best.ckpt").is_file():
        intact.append(f"the best so far is in {directory / 'best.ckpt'}")
    where = "; ".join(intact) if intact else "no checkpoint had been written yet"
    return f"training stopped at step {step}: {what} (not finite; try a lower learning_rate); {where}"


class EvalHook:
    """Runs ``evaluate(state) -> dict``: times it, prints strings (samples) and numbers, logs the record,
    offers it to the :class:`BestKeeper`, and stops the run if the best metric is not finite."""

    def __init__(self, evaluate: Callable[[TrainState], dict], sink: Sink, keeper: BestKeeper, diverged: Callable):
        self.evaluate, self.sink, self.keeper, self.diverged = evaluate, sink, keeper, diverged
        self.seconds = 0.0  # the latest evaluation's duration, compilation included the first time
        self.last: dict = {}

    def __call__(self, state: TrainState, step: int, elapsed: float) -> dict:
        t0 = time.perf_counter()
        result = dict(self.evaluate(state))
        self.seconds = time.perf_counter() - t0
        self.last = {"step": step, **result}
        for k, v in result.items():
            if isinstance(v, str):
                self.sink.say(f"[step {step}] {k}:\n{v}")
        numbers = {k: v for k, v in result.items() if not isinstance(v, str)}
        self.sink.say(f"[step {step}] " + "  ".join(f"{k} {v:.4f}" for k, v in numbers.items()))
        self.sink.log({"kind": "eval", "step": step, "elapsed_s": elapsed, **result})
        value = result.get(self.keeper.metric)
        if value is not None and not math.isfinite(value):
            self.diverged(step, f"the evaluation's {self.keeper.metric} is {value}")
        self.keeper.offer(state, self.last)
        return self.last


# ---------------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------------


class _Run(NamedTuple):
    """What one call of :func:`fit` holds while it runs."""

    options: FitOptions
    budget: Budget
    sink: Sink
    keeper: BestKeeper
    hook: EvalHook | None
    checkpointer: Any
    train_log: _TrainLog


def fit(state: TrainState, train_step: Callable, batches: Batcher | Callable[[int], Any],
        options: FitOptions, *, evaluate: Callable[[TrainState], dict] | None = None,
        checkpointer=None, out_dir: str | os.PathLike | None = None) -> FitResult:  # fmt: skip
    """Train from ``state`` until the budget of ``options`` is spent; evaluate at the start, every
    ``eval_every`` steps and at the end; save ``latest`` every ``checkpoint_every`` steps and at the end,
    ``best`` whenever ``best_metric`` improves; write ``metrics.jsonl`` and ``loss.png`` into ``out_dir``.

    Raises:
      TrainingDiverged: the loss, a gradient or the evaluation became NaN/inf; nothing is saved for that
        step, and the message names the checkpoints that stay intact (``latest.ckpt``, ``best.ckpt``).
    """
    _check_options(options)
    first = int(state.step)
    budget = Budget(options, first, evaluate is not None)
    sink = Sink(out_dir, options.verbose, options.steps, first)
    if first > 0:
        sink.truncate(first)
    keeper = BestKeeper(options.best_metric, checkpointer, resumed_best(checkpointer, options.best_metric, first))

    def diverged(step, what):
        sink.log({"kind": "diverged", "step": step, "what": what})
        raise TrainingDiverged(divergence_message(step, what, checkpointer, keeper))

    hook = EvalHook(evaluate, sink, keeper, diverged) if evaluate is not None else None
    items = int(getattr(batches, "items_per_step", 1))
    run = _Run(options, budget, sink, keeper, hook, checkpointer, _TrainLog(options.item_name, items))
    try:
        state = _loop(run, budget.begin(state), train_step, batches, diverged)
    finally:
        sink.close()
    last = hook.last if hook is not None else {}
    _report(sink, last, keeper)
    if out_dir is not None and options.plot and sink.path.exists():
        from rnn_jax.harness.plots import loss_curve

        loss_curve(sink.path, Path(out_dir) / "loss.png")
    elapsed = time.perf_counter() - budget.start
    return FitResult(state, int(state.step), elapsed, budget.items_per_s(items), last, keeper.best)


def _loop(run: _Run, state: TrainState, train_step, batches, diverged) -> TrainState:
    """Step until the budget says stop; evaluate and checkpoint on their schedules and once at the end."""
    budget, hook = run.budget, run.hook
    step = int(state.step)
    eval_seconds = lambda: hook.seconds if hook is not None else 0.0  # noqa: E731
    if hook is not None:
        # At the start: the untrained loss and, with a time budget, an evaluation's cost (compilation included).
        hook(state, step, time.perf_counter() - budget.start)
    while step < budget.target and not budget.out_of_time(eval_seconds()):
        t0 = time.perf_counter()
        state, metrics = train_step(state, batches(step))
        loss = float(metrics["loss"])  # one sync per step: cheap next to an RNN step, and NaN is seen at once
        if not bool(metrics["finite"]):
            diverged(step + 1, f"the loss is {loss} and the gradient norm {float(metrics['grad_norm'])}")
        seconds = time.perf_counter() - t0
        budget.record(step, seconds)
        run.train_log.add(loss, seconds if step > budget.first_step else None)
        step += 1
        state = budget.reestimate(state, step, eval_seconds())
        _after_step(run, state, step, float(metrics["grad_norm"]))
    if hook is not None and hook.last.get("step") != step:
        hook(state, step, time.perf_counter() - budget.start)
    if run.checkpointer is not None and run.checkpointer.last_saved_step != step:
        run.checkpointer.save(state, "latest")
    return state


def _after_step(run: _Run, state: TrainState, step: int, grad_norm: float) -> None:
    """Log, evaluate and checkpoint on their schedules (the end of the run does its own)."""
    options, target = run.options, run.budget.target
    postfix = {}
    if step % options.log_every == 0 or step == target:
        record = run.train_log.flush(step, grad_norm, time.perf_counter() - run.budget.start)
        run.sink.log(record)
        postfix = {"loss": f"{record['loss']:.3f}", options.item_name + "/s": f"{record[run.train_log.key]:,.0f}"}
    run.sink.advance(target if target < run.budget.first_step + 10**9 else None, **postfix)
    if run.hook is not None and step % options.eval_every == 0 and step < target:
        run.hook(state, step, time.perf_counter() - run.budget.start)
    if run.checkpointer is not None and step % options.checkpoint_every == 0 and step < target:
        run.checkpointer.save(state, "latest")


def _report(sink: Sink, last: dict, keeper: BestKeeper) -> None:
    """Print and log the final model's and the best model's metric, labelled."""
    metric = keeper.metric
    if metric not in last or keeper.best is None:
        return
    record = {"kind": "summary", f"final_{metric}": last[metric], "final_step": last["step"],
              f"best_{metric}": keeper.best[metric], "best_step": keeper.best["step"]}  # fmt: skip
    sink.log(record)
    sink.say(f"final model (step {last['step']}): {metric} {last[metric]:.4f}; "
             f"best model (step {keeper.best['step']}, best.ckpt): {metric} {keeper.best[metric]:.4f}")  # fmt: skip
