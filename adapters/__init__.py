"""Variants (the public model ids), adapter validation, and later the adapter registry."""
