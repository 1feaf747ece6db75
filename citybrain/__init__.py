"""City brain: shared entry points (CLI), settings and errors."""
