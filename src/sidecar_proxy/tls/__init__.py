"""TLS at the sidecar: the proxy port's contexts (and the app's, with ``UPSTREAM_TLS``), live reload
of the certificate files, client identities and the ``X-Forwarded-Client-Cert`` header.

* :mod:`.material` reads the PEM files named by the settings into ``ssl.SSLContext`` objects and
  describes the certificates (subject, SANs, expiry) for ``check-config`` and the metrics;
* :mod:`.reload` watches those files and keeps the last good material in service;
* :mod:`.identity` is pure: which client identities are let in, and the XFCC value;
* :mod:`.accept` is the proxy port's TLS handshake: plain HTTP answered with a clear 400, the
  handshake bounded in time, every failure counted by reason.

Nothing here imports the data path; the data path reads :class:`~.accept.ServerTLS` and
:class:`~.identity.Peer`.
"""
