"""Build environments, identified by digest."""
