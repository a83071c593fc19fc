"""``make demo``: the paper's pipeline in miniature on PubMed and SmolLM2-135M (see ``run.py``)."""
