"""The Python tools' third-party imports: where one fails, one line and exit 1, not a traceback.

    from needs import needs
    with needs("PyTorch", "torch"):
        import torch

prints "<script>: needs PyTorch (import torch failed: <reason>)" to stderr, naming the script
that was run (a tool imported by another one names the other), the reason on one line.
"""
import contextlib
import os
import sys


@contextlib.contextmanager
def needs(package, module):
    try:
        yield
    except (ImportError, OSError) as e:  # OSError: a shared library of the package's that does not load
        reason = " ".join(str(e).split())
        sys.exit(f"{os.path.basename(sys.argv[0])}: needs {package} (import {module} failed: {reason})")
