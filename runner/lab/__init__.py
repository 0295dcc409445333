"""The lab: a seeded, persistent simulation of an Exchange 2000 IM estate."""
