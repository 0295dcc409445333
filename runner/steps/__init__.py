"""Step modules, discovered by name from this package (see base.py and registry.py)."""
