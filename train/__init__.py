"""train: see the README."""
