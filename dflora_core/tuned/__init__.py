"""Using a finished run: the run as a classifier again, export, predict / evaluate, reproduce (docs/export.md)."""
