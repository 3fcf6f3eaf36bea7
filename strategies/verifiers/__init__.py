"""Verifiers: implementations of the ``strategies.ports.Verifier`` port, one module each.

- ``arithmetic``: re-computes the arithmetic a candidate writes (no reference needed);
- ``exact``: reference answer, multiple-choice key, JSON schema (evaluation / known answers);
- ``judge``: the chat backend as a yes/no logprob judge;
- ``registry``: names → factories, and user plugins.

Importing this package imports nothing else: pick the module you need.
"""
