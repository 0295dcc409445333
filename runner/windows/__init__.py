"""Windows command builders and output parsers (cmd.exe, reg.exe, msiexec, sc)."""
