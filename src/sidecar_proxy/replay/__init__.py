"""Replay copies of request bodies: what a retry sends again when the first attempt failed."""
