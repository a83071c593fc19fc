"""Instruction-augmented corpora: template rendering (``templates``), chains of texts and pairs
(``chains``) and the general/domain recipes with their blend and mixture report (``recipes``).
"""
