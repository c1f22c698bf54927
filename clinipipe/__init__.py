"""clinipipe: move a hospital's EHR data from PostgreSQL into a warehouse and keep it there."""

__version__ = "0.1.0"
