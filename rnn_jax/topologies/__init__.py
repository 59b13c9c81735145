"""The topologies of Lecture 10, as functions over any cell.

=====================  ==========================================  ======================================
lecture's name         function                                    e.g.
=====================  ==========================================  ======================================
one to one             :func:`one_to_one`                          a feed-forward net: one step
one to many            :func:`one_to_many`                         image captioning (vector -> sequence)
many to one            :func:`many_to_one`                         sentiment / sequence classification
many to many           :func:`rnn_jax.run`                         per-frame labels (synchronised)
many to many (seq2seq) :func:`encoder_decoder_apply`               translation: encoder, then decoder
sequential processing  :func:`glimpse_apply`                       reading an image by glimpses
=====================  ==========================================  ======================================

Modules: :mod:`~rnn_jax.topologies.basic` (dense layers, cells by name, the generic topologies),
:mod:`~rnn_jax.topologies.attention`, :mod:`~rnn_jax.topologies.seq2seq` (the encoder-decoder's params, encoder
and decoder step), :mod:`~rnn_jax.topologies.teacher_forcing` (its pass over whole batches) and
:mod:`~rnn_jax.topologies.glimpse`; every public name is importable from here.

Shape letters: ``B`` batch, ``T`` time (decoder steps), ``S`` source steps, ``I`` input features,
``H`` hidden units, ``O`` a cell's outputs, ``E`` embedding size, ``M`` encoder features (memory), ``V``
vocabulary, ``N`` parts of a fixed input (patches), ``F`` features of a part, ``C`` classes.

Like :func:`rnn_jax.run`, the generic functions take ``(cell, params, carry, xs)`` and any number of
leading batch dimensions. The seq2seq and glimpse models have params as pytrees with ``*_init``
functions; the model's structure (cell kind, attention, bidirectional encoder) is read from the *types*
of its params, so ``*_apply(params, ...)`` needs no config and params work with ``jax.grad`` and optax
as they are.

Every function that runs a recurrence takes ``run``'s algorithm options, ``impl`` (default ``"auto"``) and
``unroll`` (default ``None``: chosen by platform and size), and passes them to each :func:`rnn_jax.run`.
Where the scanned step is the cell itself (:func:`many_to_one`, the encoder layers of
:func:`encoder_decoder_apply`) ``impl`` is followed as given. Where the step is a plain function built
around the cell (the decoder with its attention, :func:`one_to_many`'s feedback loop, :func:`glimpse_apply`)
the kernels cannot run it: ``impl="pallas"`` and ``"custom_jvp"`` run those loops with ``"scan"``
(:func:`step_impl`), while ``unroll`` applies to every loop.
"""

from rnn_jax.topologies.attention import ATTENTIONS, BahdanauParams, LuongParams, attend
from rnn_jax.topologies.basic import (
    CellParams,
    Dense,
    carry_from_hidden,
    cell_and_params,
    cell_init,
    cell_of,
    dense,
    dense_init,
    hidden_of,
    many_to_one,
    one_to_many,
    one_to_one,
    step_impl,
)
from rnn_jax.topologies.glimpse import GlimpseOutput, GlimpseParams, glimpse_apply, glimpse_init, image_patches
from rnn_jax.topologies.seq2seq import (
    Bidirectional,
    DecoderContext,
    DecoderState,
    Seq2SeqOutput,
    Seq2SeqParams,
    decoder_start,
    decoder_step_fn,
    encode,
    encoder_decoder_init,
)
from rnn_jax.topologies.teacher_forcing import encoder_decoder_apply

__all__ = [
    "Dense",
    "dense_init",
    "dense",
    "hidden_of",
    "carry_from_hidden",
    "cell_of",
    "cell_and_params",
    "CellParams",
    "cell_init",
    "step_impl",
    "one_to_one",
    "one_to_many",
    "many_to_one",
    "Bidirectional",
    "BahdanauParams",
    "LuongParams",
    "Seq2SeqParams",
    "DecoderContext",
    "DecoderState",
    "Seq2SeqOutput",
    "ATTENTIONS",
    "encoder_decoder_init",
    "encode",
    "attend",
    "decoder_start",
    "decoder_step_fn",
    "encoder_decoder_apply",
    "GlimpseParams",
    "GlimpseOutput",
    "image_patches",
    "glimpse_init",
    "glimpse_apply",
]
