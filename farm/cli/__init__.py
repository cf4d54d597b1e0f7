"""The ``mangos-farm`` command line: the only place that prints."""
