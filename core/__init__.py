"""telemon: home telemonitoring of chronically ill citizens (edge gateway, central, dashboard)."""

__version__ = "0.1.0"
