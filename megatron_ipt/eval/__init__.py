"""Evaluation of exported models: held-out perplexity and held-out tasks (``heldout``)."""
