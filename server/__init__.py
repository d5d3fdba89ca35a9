"""The tutor gateway: an OpenAI-compatible API in front of a pluggable generation engine."""
