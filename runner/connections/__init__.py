"""How commands reach a host. See base.py for the contract."""
