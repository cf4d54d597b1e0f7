"""Cross-validation of the supply chain: attestation logs, peer comparison, K-of-N admission,
reproducibility rechecks with varied environments, and offline rebuild bundles."""
