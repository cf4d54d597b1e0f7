"""MANGOS build farm: from-source builds with signed provenance, on one laptop or a fleet."""

__version__ = "0.1.0"
