"""Deliberate: the OpenAI-compatible reasoning-serving gateway (HTTP edge, backends, CLI)."""
