"""``python -m megatron_ipt.eval``: the held-out evaluation (see :mod:`megatron_ipt.eval.heldout`)."""

import sys

from megatron_ipt.eval.heldout import main

sys.exit(main())
