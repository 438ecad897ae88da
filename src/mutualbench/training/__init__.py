"""Training: the epoch loop, one run assembled and run into its record, run-time estimates, golden trajectories."""
