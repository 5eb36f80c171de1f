"""Reference proxies that the sidecar is measured against, run as separate processes."""
