"""HTTP surfaces: one module per surface, all calling the same service."""
