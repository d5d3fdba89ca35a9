"""ui: see the README."""
