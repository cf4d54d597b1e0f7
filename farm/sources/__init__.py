"""Fetching sources at pinned commits."""
