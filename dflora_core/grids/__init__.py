"""Grids of runs: folders and identity, plans, which records feed which table, the backends, ``dflora compare``."""
