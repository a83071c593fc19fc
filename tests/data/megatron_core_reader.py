"""Read indexed datasets with megatron-core's own ``IndexedDataset`` and print them as JSON.

Run as a script (``python megatron_core_reader.py PREFIX...``). ``import megatron.core`` pulls in the
whole of megatron-core (tensor parallel layers, Transformer Engine probes: ~10 s on CPU); the
narrowest working import stubs the ``megatron`` and ``megatron.core`` package objects so their
``__init__`` does not run, loads ``megatron.core.parallel_state`` first (it breaks an import cycle
with ``megatron.core.utils``), then ``megatron.core.datasets.indexed_dataset``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
import warnings


def import_megatron_indexed_dataset():
    spec = importlib.util.find_spec("megatron")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("megatron-core is not installed")
    root = next(iter(spec.submodule_search_locations))
    for name, path in (("megatron", root), ("megatron.core", f"{root}/core")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [path]
            sys.modules[name] = pkg
    warnings.simplefilter("ignore")
    importlib.import_module("megatron.core.parallel_state")
    return importlib.import_module("megatron.core.datasets.indexed_dataset").IndexedDataset


def main(prefixes: list[str]) -> None:
    indexed_dataset = import_megatron_indexed_dataset()
    out = {}
    for prefix in prefixes:
        ds = indexed_dataset(prefix, multimodal=False, mmap=True)
        out[prefix] = {"len": len(ds), "docs": [ds[i].tolist() for i in range(len(ds))]}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
