"""The build stage: one recipe at one commit, built in a sandbox, its outputs stored and its provenance signed."""
