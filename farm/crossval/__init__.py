"""Cross-validation of the supply chain: attestation logs, peer comparison, K-of-N admission,
reproducibility rechecks with varied environments and their signed rebuild attestations, the reproducibility
gate, and offline rebuild bundles."""
