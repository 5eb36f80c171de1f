from support.client import get
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer


def test_get_through_proxy(proxy: ProxyServer, upstream: Upstream) -> None:
    resp = get(proxy.port, "/hello?x=1")
    assert resp.status == 200
    assert resp.body == b"GET /hello?x=1"
    assert upstream.received[0].header("X-Forwarded-For") == "127.0.0.1"
