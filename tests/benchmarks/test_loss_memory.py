"""benchmarks/loss_memory.py --tiny: both arms run in fresh processes and report peaks and their ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_form_prints_both_peaks_and_ratio() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loss_memory.py"), "--tiny"],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    peaks = {m[0]: float(m[1]) for m in re.findall(r"^(full|chunked)\s+peak \+\s*([\d.]+) MiB", out, re.M)}
    assert set(peaks) == {"full", "chunked"} and peaks["full"] > 0
    ratio = re.search(r"full / chunked peak memory: ([\d.]+)x \(loss relative difference ([\d.e+-]+)\)", out)
    assert ratio is not None, out
    assert float(ratio[2]) <= 1e-6  # the two arms compute the same loss
    # 2 x 256 x 4,000 fp32 logits alone are 7.8 MiB, held several times over by the full arm.
    assert peaks["full"] > peaks["chunked"] and peaks["full"] >= 15
