"""eval: see the README."""
