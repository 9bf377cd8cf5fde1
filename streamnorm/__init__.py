"""streamnorm: out-of-core, chunk-invariant score normalization for copy detection."""

__version__ = "0.1.0"
