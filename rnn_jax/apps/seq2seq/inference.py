"""A trained seq2seq model from Python: load a run's checkpoint or a shipped model, translate strings (greedy
or beam search), score a split, export the params alone in half precision (the shipped models' format).

Decoding follows each input's length (:class:`~rnn_jax.apps.seq2seq.data.LengthBudget`); an output still cut
by that limit, or empty, is flagged (:class:`Translation`; :func:`translate` warns). Inputs are read the way
the model was trained (:meth:`Model.normalize`: lower-cased for a vocabulary of lower-case letters), and
refused one by one, each with its reason, when empty, longer than :data:`MAX_INPUT_LEN` or holding a symbol
the model does not know.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import checkpoint, harness, topologies
from rnn_jax.apps.seq2seq.config import KIND, Config
from rnn_jax.apps.seq2seq.data import LengthBudget, load_config_task
from rnn_jax.apps.seq2seq.decoding import check_vocab_fits_beam, decode_pairs, finished, make_decoder
from rnn_jax.apps.seq2seq.evaluation import evaluate
from rnn_jax.apps.seq2seq.model import init_params, make_optimizer, state_template
from rnn_jax.cells import Cell, resolve_cell
from rnn_jax.data import pairs as pairdata
from rnn_jax.errors import UserError
from rnn_jax.harness.usercells import cell_record, loaded_cell, stored_cell_spec

__all__ = [
    "Model",
    "Translation",
    "TranslationWarning",
    "SHIPPED_MODELS",
    "MAX_INPUT_LEN",
    "shipped_model_path",
    "load_model",
    "translate",
    "translate_each",
    "export_model",
    "score_split",
]

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
"""Where the package keeps the models the project trained itself (``rnn_jax/models/``)."""

SHIPPED_MODELS = {"g2p": "g2p-cmudict.ckpt"}
"""Name -> file in :data:`MODELS_DIR`: ``load_model(name="g2p")``, ``rnn-jax seq2seq translate --model g2p``."""

SHIPPED_HEADER_EXTRAS = {"g2p-cmudict.ckpt": {"length_budget": [1.43, 13], "max_source_len": 28}}
"""What shipped files exported before checkpoints stored it lack in their header, read off their training
split as training does (:meth:`~rnn_jax.apps.seq2seq.data.LengthBudget.fit`, the longest training source);
``tests/test_g2p_model.py`` recomputes G2P's from CMUdict."""

EXPORT_DTYPES = ("float16", "bfloat16", "float32")

MAX_INPUT_LEN = 1000
"""Source tokens an input may hold at most (:func:`translate` refuses a longer one by name): decoding a
source of ``S`` tokens holds ``S`` encoder outputs and runs ``budget(S)`` decoder steps."""


class TranslationWarning(UserWarning):
    """An output :func:`translate` returns that is cut by the length limit, or empty."""


class Translation(NamedTuple):
    """One input's result from :func:`translate_each`.

    Attributes:
      source: the input as given.
      output: the decoded string (``""`` when refused, or when the model produced nothing).
      cut: decoding reached the length limit before ``</s>``: ``output`` is incomplete.
      unseen_length: the input is longer than every training source: the model never learned such lengths
        and the output is likely wrong (it often ends early).
      error: why the input was refused (``None``: it was decoded).
    """

    source: str
    output: str
    cut: bool = False
    error: str | None = None
    unseen_length: bool = False

    @property
    def empty(self) -> bool:
        """Decoded, and the model produced nothing (an input it cannot handle)."""
        return self.error is None and self.output == ""

    def notice(self) -> str | None:
        """One line saying what is wrong with this result, or ``None``."""
        if self.error is not None:
            return self.error
        if self.cut:
            return f"output for {_shown(self.source)} cut at the length limit ({_shown(self.output, 40)} is incomplete)"
        if self.empty:
            return f"the model produced an empty output for {_shown(self.source)}"
        if self.unseen_length:
            return f"{_shown(self.source)} is longer than any input the model was trained on: the output is unreliable"
        return None


def _shown(text: str, width: int = 24) -> str:
    """``text`` quoted, shortened to its start and length when long (a 100,000-letter word in one line)."""
    return repr(text) if len(text) <= width else f"{text[:width]!r}... ({len(text)} characters)"


class Model(NamedTuple):
    """A trained model, what :func:`load_model` returns and :func:`translate` reads.

    Attributes:
      params: the :class:`~rnn_jax.topologies.Seq2SeqParams` (float32).
      config: the run's :class:`~rnn_jax.apps.seq2seq.Config` (one stored by an older release is translated).
      src_vocab, tgt_vocab: the :class:`~rnn_jax.data.pairs.Vocab` of sources and targets.
      source_unit, target_unit: ``"char"`` or ``"word"``: how strings are cut into tokens.
      max_len: the longest training target plus ``</s>`` and slack (the fixed limit of older releases).
      length_budget: the longest output decoding produces for a source of each length (``</s>`` included);
        ``None`` (a model built by hand): ``max_len`` for every source.
      max_source_len: the longest training source (``None``: not known); longer inputs are flagged.
    """

    params: topologies.Seq2SeqParams
    config: Config
    src_vocab: pairdata.Vocab
    tgt_vocab: pairdata.Vocab
    source_unit: str
    target_unit: str
    max_len: int
    length_budget: LengthBudget | None = None
    max_source_len: int | None = None

    @property
    def decoding_length(self) -> int | LengthBudget:
        """What :func:`~rnn_jax.apps.seq2seq.make_decoder` takes: the budget, else the fixed ``max_len``."""
        return self.length_budget if self.length_budget is not None else self.max_len

    def normalize(self, text: str) -> str:
        """``text`` as the model reads it: lower-cased when every cased symbol of the source vocabulary is
        lower-case (upper-cased when every one is upper-case), and without whitespace at either end when
        the vocabulary holds none. The command line and :func:`translate` both read inputs through it."""
        cased = [s for s in self.src_vocab.symbols if s not in pairdata.RESERVED and s.lower() != s.upper()]
        if cased and all(s == s.lower() for s in cased):
            text = text.lower()
        elif cased and all(s == s.upper() for s in cased):
            text = text.upper()
        if not any(s.isspace() for s in "".join(self.src_vocab.symbols)):
            text = text.strip()
        return text


def shipped_model_path(name: str) -> Path:
    """The file of the shipped model ``name`` (:data:`SHIPPED_MODELS`), or a :class:`UserError` saying why not."""
    if name not in SHIPPED_MODELS:
        raise UserError(f"no shipped model named {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    path = MODELS_DIR / SHIPPED_MODELS[name]
    if not path.is_file():
        raise UserError(f"the shipped model {name!r} is missing from this install (expected {path})")
    return path


def load_model(
    ckpt: str | os.PathLike | None = None, which: str = "best", *, name: str | None = None, cell: Cell | None = None
) -> Model:
    """The model of a run directory (its ``best`` checkpoint, else its ``latest``), of a ``.ckpt`` file, or the
    shipped model ``name``; params come back in float32 whatever the file stores (an export may be float16).

    A run of a user's cell loads it from the import path its checkpoint records; where it has none (a cell
    defined in ``__main__`` or inside a function), pass the cell: ``load_model(run_dir, cell=my_cell)``.
    The returned ``config.cell`` is then the :class:`~rnn_jax.Cell` itself.
    """
    if (ckpt is None) == (name is None):
        raise UserError("give either a checkpoint (a run directory or a .ckpt file) or the name of a shipped model")
    run = harness.read_run(shipped_model_path(name) if name is not None else ckpt, which, KIND, Config)
    config = dataclasses.replace(run.config, cell=loaded_cell(run.meta, run.config.cell, ckpt or run.path, cell))
    shipped = SHIPPED_HEADER_EXTRAS.get(run.path.name, {}) if run.path.resolve().parent == MODELS_DIR else {}
    meta = {**shipped, **run.meta}
    src_vocab, tgt_vocab = pairdata.Vocab.from_json(meta["src_vocab"]), pairdata.Vocab.from_json(meta["tgt_vocab"])
    if config.pairs is not None:
        config = dataclasses.replace(config, pairs=_find_pairs(config, run.path))
    if "param_dtype" in meta:  # an export: the params alone, in that dtype
        # shapes alone (nothing drawn or computed): the template a restore checks the file against
        fresh = jax.eval_shape(lambda: init_params(config, len(src_vocab), len(tgt_vocab), jax.random.key(0)))
        template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, meta["param_dtype"]), fresh)
        stored, _ = checkpoint.restore(run.path, template)
        params = jax.tree.map(lambda a: a.astype(jnp.float32), stored)
    else:
        template = state_template(config, len(src_vocab), len(tgt_vocab), make_optimizer(config, 1))
        params = harness.load_params(run, template)
    # A checkpoint older than the stored budget: 2 S + max_len, at least the fixed limit it was decoded to.
    budget = LengthBudget(*meta.get("length_budget", (2.0, int(meta["max_len"]))))
    return Model(params, config, src_vocab, tgt_vocab, meta["source_unit"], meta["target_unit"], meta["max_len"],
                 budget, meta.get("max_source_len"))  # fmt: skip


def _find_pairs(config: Config, ckpt: Path) -> str:
    """The stored pairs path; a relative one (stored before paths were made absolute) is looked up where
    training ran (the run directory with ``config.out`` taken off its end), in the checkpoint's directory
    and in the working directory, in that order; the first file found, else the path as stored."""
    path = Path(config.pairs)
    if path.is_absolute():
        return str(path)
    run_dir = ckpt.resolve().parent
    places = []
    out_parts = Path(config.out).parts if config.out and not Path(config.out).is_absolute() else ()
    if out_parts and run_dir.parts[-len(out_parts) :] == out_parts:
        places.append(run_dir.parents[len(out_parts) - 1])
    places += [run_dir, Path.cwd()]
    return next((str(p / path) for p in places if (p / path).is_file()), str(path))


def export_model(model: Model, path: str | os.PathLike, *, dtype: str = "float16", info: dict | None = None) -> Path:
    """Write ``model``'s params alone, cast to ``dtype``, with what :func:`load_model` needs to rebuild it
    (config, vocabularies, units, decoding length) and ``info`` (e.g. the training command and the test
    metrics) in the header. A float16 file is a quarter of a training checkpoint (no optimiser moments)."""
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    meta = harness.run_meta(
        KIND,
        dataclasses.replace(model.config, cell=stored_cell_spec(model.config.cell)),
        cell=cell_record(resolve_cell(model.config.cell)),
        src_vocab=model.src_vocab.to_json(),
        tgt_vocab=model.tgt_vocab.to_json(),
        source_unit=model.source_unit,
        target_unit=model.target_unit,
        max_len=model.max_len,
        **({"length_budget": model.length_budget.to_json()} if model.length_budget is not None else {}),
        **({"max_source_len": model.max_source_len} if model.max_source_len is not None else {}),
        param_dtype=dtype,
        info=dict(info or {}),
    )
    return checkpoint.save(path, jax.tree.map(lambda a: a.astype(dtype), model.params), meta)


def score_split(
    model: Model, split: str = "test", beam: int = 1, limit: int | None = None, *, pairs: str | None = None
) -> dict:
    """Decode a split of the model's own task (``test`` or ``val``, the first ``limit`` pairs) and score it.

    The task is rebuilt from the model's config (for G2P: cmudict, the same hash split as in training), and
    the model's vocabularies read it, so the numbers are those ``train`` printed for the same params.
    ``pairs``: a pairs file to split and score instead (read with the model's units), e.g. the training
    file moved since.
    """
    if split not in ("test", "val"):
        raise UserError(f"split must be 'test' or 'val', got {split!r}")
    harness.check_int("beam", beam)
    check_vocab_fits_beam(beam, model.tgt_vocab)
    scored = getattr(_scored_task(model, pairs), split)[:limit]
    if not scored:
        raise UserError(f"the {split} split of task {model.config.task!r} is empty")
    t0 = time.perf_counter()
    decoder = make_decoder(model.decoding_length, beam, model.config.length_penalty)
    scores, _, _ = evaluate(
        model.params, scored, model.src_vocab, model.tgt_vocab, decoder, batch_size=model.config.eval_batch_size
    )
    return {"split": split, "beam": beam, **scores.as_dict(), "decode_s": time.perf_counter() - t0}


def _scored_task(model: Model, pairs: str | None) -> pairdata.Task:
    """The model's own task, or the pairs file ``pairs`` read with the model's units."""
    config = model.config
    if pairs is not None:
        return load_config_task(dataclasses.replace(config, pairs=str(pairs)))
    if config.pairs is not None and not os.path.isfile(config.pairs):
        raise UserError(
            f"the model's pairs file {config.pairs!r} is not where training ran, beside the checkpoint or here; "
            "give it with --pairs FILE (Python: score_split(..., pairs=FILE))"
        )
    return load_config_task(config)


def _encode(model: Model, text: str, max_input_len: int) -> list[int] | str:
    """The source ids of ``text`` (read through :meth:`Model.normalize`), or why it cannot be translated."""
    if not isinstance(text, str):
        return f"input {text!r} is not a string"
    tokens = pairdata.tokenize(model.normalize(text), model.source_unit)
    if not tokens:
        return f"input {text!r} is empty"
    if len(tokens) > max_input_len:
        unit = "characters" if model.source_unit == "char" else "words"
        return f"input {_shown(text)} has {len(tokens)} {unit}; this model reads at most {max_input_len}: split it"
    known = set(model.src_vocab.symbols) - set(pairdata.RESERVED)
    missing = sorted({t for t in tokens if t not in known})
    if missing:
        shown = " ".join(s for s in model.src_vocab.symbols if s not in pairdata.RESERVED)
        return f"input {_shown(text)} has symbols outside the vocabulary: {missing}; known: {shown}"
    return model.src_vocab.encode(tokens)


def _check_call(model: Model, inputs, beam: int) -> None:
    if isinstance(inputs, str):
        raise TypeError(f"inputs must be a list of strings, got the string {inputs!r}; pass [{inputs!r}]")
    harness.check_int("beam", beam)
    check_vocab_fits_beam(beam, model.tgt_vocab)
    if not inputs:
        raise UserError("nothing to translate: give at least one input")


def translate_each(model: Model, inputs: list[str], beam: int = 1, *, max_input_len: int = MAX_INPUT_LEN):
    """A :class:`Translation` per input: decoded (greedy, or beam search of width ``beam``), or refused with
    the reason (empty, more than ``max_input_len`` tokens, a symbol outside the vocabulary) while the others
    are decoded. Decoding runs to the model's length budget for each input; ``cut`` flags an output that
    reached it without ``</s>``, ``unseen_length`` an input longer than every training source. A bad ``beam``,
    or no inputs at all, is a :class:`UserError`."""
    _check_call(model, inputs, beam)
    encoded = [_encode(model, text, max_input_len) for text in inputs]
    good = [i for i, e in enumerate(encoded) if not isinstance(e, str)]
    results = [
        Translation(text, "", error=e if isinstance(e, str) else None) for text, e in zip(inputs, encoded, strict=True)
    ]
    if good:
        decoder = make_decoder(model.decoding_length, beam, model.config.length_penalty)
        # The evaluation batch size: the shapes compiled during training, one shape for any number of inputs.
        ids, _ = decode_pairs(model.params, [encoded[i] for i in good], decoder, model.config.eval_batch_size,
                              model.config.pad_multiple)  # fmt: skip
        for i, out in zip(good, ids, strict=True):
            text = pairdata.detokenize(model.tgt_vocab.decode(out), model.target_unit)
            unseen = model.max_source_len is not None and len(encoded[i]) > model.max_source_len
            results[i] = Translation(inputs[i], text, cut=not finished(out), unseen_length=unseen)
    return results


def translate(model: Model, inputs: list[str], beam: int = 1, *, max_input_len: int = MAX_INPUT_LEN) -> list[str]:
    """Decode each input string: greedy, or beam search of width ``beam`` (never worse than greedy).

    The first input that cannot be translated (see :func:`translate_each`) is a :class:`UserError` naming it;
    an output cut at the length limit, or empty, comes back with a :class:`TranslationWarning`.
    """
    _check_call(model, inputs, beam)
    for text in inputs:
        reason = _encode(model, text, max_input_len)
        if isinstance(reason, str):
            raise UserError(reason)
    results = translate_each(model, inputs, beam, max_input_len=max_input_len)
    for r in results:
        if r.notice() is not None:
            warnings.warn(r.notice(), TranslationWarning, stacklevel=2)
    return [r.output for r in results]
