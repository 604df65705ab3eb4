"""Puts this Python process under the fake CUDA device when ``DFLORA_FAKE_CUDA=1`` (tests/fake_cuda.py):
the children of ``dflora compare --jobs N`` and of the CLI tests run their CUDA paths like the parent."""

import os
import sys

if os.environ.get("DFLORA_FAKE_CUDA") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fake_cuda

    fake_cuda.install_for_process()
