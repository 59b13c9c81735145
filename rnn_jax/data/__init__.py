"""Datasets and batching: ``text`` (character vocabularies, TBPTT streams), ``pairs`` (seq2seq tasks),
``images`` (the 8x8 digits). Each module is imported on its own so that optional extras stay optional."""
