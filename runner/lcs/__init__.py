"""LCS 2005 side of the migration: SIP URI mapping and the contact model."""
