"""The synthesizer's tuning data: converters of task collections (``collections``), the PubMed miner
(``pubmed``), rendering/grouping/tokenizing (``tuning_data``) and the synthesizer's evaluation
(``evaluate``). Shared record types live in ``example``.
"""
