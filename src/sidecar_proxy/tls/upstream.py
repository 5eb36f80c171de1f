"""TLS to the app (``UPSTREAM_TLS``): the context the pool connects with, reloaded like the
proxy port's.

The app's certificate must chain to ``UPSTREAM_CA_FILE`` (else the system's CAs) and carry
``UPSTREAM_SERVER_NAME`` (else ``UPSTREAM_HOST``) as a SAN, which is also sent as SNI. Pooled
connections are reused exactly as plain ones are: the handshake is paid once per connection.
A rotated client certificate or CA applies to new connections; pooled ones keep theirs until
the idle timeout or the app closes them.
"""

from __future__ import annotations

import ssl

from sidecar_proxy.config import Settings
from sidecar_proxy.tls.material import files, upstream_context
from sidecar_proxy.tls.reload import Reloader


class UpstreamTLS:
    __slots__ = ("reloader", "server_name")

    def __init__(self, settings: Settings) -> None:
        self.reloader = Reloader(
            files(settings, "upstream_ca_file", "upstream_cert_file", "upstream_key_file"),
            lambda: upstream_context(settings),
        )
        self.server_name = settings.upstream_server_name or settings.upstream_host

    def context(self) -> ssl.SSLContext:
        return self.reloader.current.context
