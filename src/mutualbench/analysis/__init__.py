"""Analysis and reports: statistics, a study's results, claims, comparisons of a rerun with stored results, tables and plots, W&B."""
