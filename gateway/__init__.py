"""gateway: an authenticating API-gateway sidecar and reverse proxy."""

__version__ = "0.1.0"
