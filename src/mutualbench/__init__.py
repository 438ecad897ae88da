"""mutualbench: reproducible knowledge-transfer benchmarks (individual, KD, DML, hint+DML) on CIFAR."""

__version__ = "0.1.0"
