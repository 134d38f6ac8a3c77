"""Core types every layer uses: the columnar `Batch`, `Schema`, event time and durations (`time`), the errors,
and installing system packages (`sysdeps`). Imports nothing else from microstream."""
