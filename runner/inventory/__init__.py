"""Inventories made from what an estate already knows: Active Directory (LDIF export or LDAP) and the clients."""
