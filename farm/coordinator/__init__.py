"""Planning and scheduling builds. Knows nothing of how a build is executed or transported."""
