"""mutualbench: reproducible knowledge-transfer benchmarks (individual, KD, DML, hint+DML) on CIFAR.

This is the composition root: importing the package imports every method plugin
(``mutualbench.methods``), which registers the method and its config section. The lower
floors (``config``, ``archs``, ``data``) import nothing above them; they learn of the
methods only through what the methods register.
"""

__version__ = "0.1.0"

from . import methods as _methods  # noqa: E402,F401  (registers every method and its config section)
