"""Bytes to columns: the numba parsers of numbers, timestamps, CSV and JSON lines (`parsing`), shared by the
file sources and the MQTT source."""
