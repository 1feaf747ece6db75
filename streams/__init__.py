"""The Faust app: thin agents over the pure detectors and routing modules."""
