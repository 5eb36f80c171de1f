"""sidecar-proxy: an HTTP/1.1 sidecar that streams, retries safely and reports."""

__version__ = "0.1.0"
