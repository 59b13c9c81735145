"""Sequence-to-sequence trainer: reversal, sorting, addition, dates, grapheme-to-phoneme, or any TSV of pairs.

The model is :func:`rnn_jax.topologies.encoder_decoder_apply`: embeddings -> encoder (LSTM or GRU,
bidirectional by default, ``--layers`` deep) -> decoder (as deep) with attention over the top encoder
layer's outputs (Luong by default, Bahdanau or none on request) -> output layer; ``--dropout`` between
stacked layers and before the output layer. Training minimises the per-token mean of the masked
cross-entropy of ``y_1 .. y_n </s>`` given ``<s> y_1 .. y_n``, with teacher forcing; scheduled sampling
(``teacher_forcing < 1``) lets each decoder step read the model's own previous prediction with
probability ``1 - r``, ``r`` decaying linearly from 1 over ``teacher_forcing_decay_steps``. The train step
passes ``--impl`` and ``--unroll`` to :func:`rnn_jax.run` (defaults: ``run``'s own choices per platform); with
``--impl pallas`` the encoder layers run the Pallas kernels and the attention decoder runs the scan.

Decoding (:mod:`rnn_jax.decode`, compiled, one example vmapped over the batch): greedy, and beam search
of width ``K``, each batch to the length its longest source allows (``ceil(a S) + b``, :class:`LengthBudget`,
fitted to the training pairs); :func:`translate_each` flags an output cut by that limit.
The beam result is the best *finished* hypothesis among the ``K`` beams and the greedy
one, ranked by ``log p / length ** length_penalty``: a beam can lose the greedy path along the way, and
adding it back makes "beam is never worse than greedy" hold by construction (the test suite checks it).

Metrics (:mod:`rnn_jax.metrics`): exact match (word accuracy), WER = 1 - exact match, and token error
rate (edit distance over reference length: the phoneme error rate for G2P), where a source with several
references (several pronunciations) is right if the output matches any of them.

Command line::

    rnn-jax seq2seq train --task addition --minutes 4 --out runs/addition
    rnn-jax seq2seq train --task g2p --minutes 60 --beam 5 --out runs/g2p
    rnn-jax seq2seq train --pairs my_pairs.tsv --steps 3000
    rnn-jax seq2seq translate --ckpt runs/g2p --beam 5 hello world
    rnn-jax seq2seq translate --model g2p --beam 5 hello world       # the model shipped in the package
    rnn-jax seq2seq evaluate --model g2p --beam 5                    # its test PER/WER, one JSON line
    rnn-jax seq2seq evaluate --ckpt runs/mine --pairs my_pairs.tsv   # a pairs file's test split
    rnn-jax seq2seq export --ckpt runs/g2p --to g2p.ckpt             # params alone, float16

``train`` prints progress and periodic validation (with a few decoded examples) on stderr and, as its
last stdout line, one JSON object with the test metrics; it writes ``metrics.jsonl``, ``loss.png``,
``attention.png`` and the ``latest``/``best`` checkpoints into ``--out``.

The package, one concern per module: :mod:`~rnn_jax.apps.seq2seq.config` (the :class:`Config` and its checks),
:mod:`~rnn_jax.apps.seq2seq.tasks` (the built-in tasks), :mod:`~rnn_jax.apps.seq2seq.data` (vocabularies and
batches), :mod:`~rnn_jax.apps.seq2seq.model` (params and loss), :mod:`~rnn_jax.apps.seq2seq.decoding` (greedy and
beam), :mod:`~rnn_jax.apps.seq2seq.evaluation` (metrics and attention), :mod:`~rnn_jax.apps.seq2seq.training`
(:func:`train`), :mod:`~rnn_jax.apps.seq2seq.inference` (:func:`load_model`, :func:`translate`),
:mod:`~rnn_jax.apps.seq2seq.plots` and :mod:`~rnn_jax.apps.seq2seq.cli`.
"""

from rnn_jax.apps.seq2seq.cli import EvaluateConfig, ExportConfig, TranslateConfig, cli_main, config_from_args
from rnn_jax.apps.seq2seq.config import ATTENTIONS, CELL_KINDS, KIND, MODEL_FIELDS, Config, check_config
from rnn_jax.apps.seq2seq.data import (
    EpochBatches,
    LengthBudget,
    Prepared,
    batch_arrays,
    prepare,
    teacher_forcing_schedule,
)
from rnn_jax.apps.seq2seq.decoding import decode_pairs, make_decoder
from rnn_jax.apps.seq2seq.evaluation import attention_maps, evaluate
from rnn_jax.apps.seq2seq.inference import (
    MAX_INPUT_LEN,
    SHIPPED_MODELS,
    Model,
    Translation,
    TranslationWarning,
    export_model,
    load_model,
    score_split,
    translate,
    translate_each,
)
from rnn_jax.apps.seq2seq.model import init_params, loss_fn, make_optimizer, state_template, teacher_forced_batch
from rnn_jax.apps.seq2seq.plots import plot_attention
from rnn_jax.apps.seq2seq.training import TrainResult, checkpoint_meta, train

__all__ = [
    "Config",
    "Model",
    "Prepared",
    "LengthBudget",
    "Translation",
    "TranslationWarning",
    "MAX_INPUT_LEN",
    "translate_each",
    "EpochBatches",
    "CELL_KINDS",
    "ATTENTIONS",
    "MODEL_FIELDS",
    "check_config",
    "KIND",
    "TrainResult",
    "TranslateConfig",
    "EvaluateConfig",
    "ExportConfig",
    "checkpoint_meta",
    "make_optimizer",
    "state_template",
    "prepare",
    "batch_arrays",
    "teacher_forcing_schedule",
    "init_params",
    "loss_fn",
    "teacher_forced_batch",
    "make_decoder",
    "decode_pairs",
    "evaluate",
    "attention_maps",
    "train",
    "load_model",
    "translate",
    "export_model",
    "score_split",
    "SHIPPED_MODELS",
    "plot_attention",
    "cli_main",
    "config_from_args",
]
