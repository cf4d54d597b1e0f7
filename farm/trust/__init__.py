"""Trust: builder and release keys, the keyring, signed provenance and its verification, signed tasks, the audit log."""
