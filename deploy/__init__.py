"""deploy: see the README."""
