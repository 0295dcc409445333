"""The migration runner: Exchange 2000 Instant Messaging to Live Communications Server 2005."""

__version__ = "0.1.0"
