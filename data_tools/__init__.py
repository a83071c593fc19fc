"""Offline corpus tools: thin command-line entry points over megatron_ipt."""
