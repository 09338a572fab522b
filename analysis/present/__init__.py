"""Presentation: console tables and plots (``plot(..., ax=None) -> (fig, ax)``). Imports only
:mod:`analysis.core`."""
