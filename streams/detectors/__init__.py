"""Pure detectors (see `base` for the contract)."""
