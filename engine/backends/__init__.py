"""Model backends: one module per library, all behind the ``Backend`` protocol in ``base``."""
