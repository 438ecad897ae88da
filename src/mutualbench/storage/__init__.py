"""What is on disk and its shape: atomic writes, locks, the study folder's file names, run records, and the typed models of stored records, manifests and specs."""
