"""Studies: specs to runs, the typed request, replicate, its plan, and the local, per-GPU and SLURM launchers."""
