"""Reloading listen addresses in one worker: bind the new ones first, then close the old.

A reload that moves the listen port must leave the proxy listening on the new
address (and no longer on the old one); a reload whose new address cannot be
bound must keep every old listener serving. Over 127.0.0.1 and ::1.
"""

from __future__ import annotations

import dataclasses
import socket

import httpx
import pytest

from dsproxy.net.addr import HostPort
from dsproxy.net.listener import ListenError
from tests.conftest import LoopThread, ProxyFactory


def _get(host: str, port: int) -> int:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with httpx.Client(timeout=5, trust_env=False) as client:
        return client.get(f"http://{authority}/echo").status_code


def _refused(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) != 0


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def test_reload_moves_the_listen_port(
    proxy_factory: ProxyFactory, loop_thread: LoopThread, host: str
) -> None:
    proxy = proxy_factory()
    server = proxy.server
    old_port = proxy.port
    new_port = _free_port(host)
    config = server.config
    new = dataclasses.replace(
        config, server=dataclasses.replace(config.server, listen=(HostPort("::", new_port),))
    )
    loop_thread.call(server.reload(new))
    assert [a.port for a in server.addresses] == [new_port]
    assert server.listening
    assert _get(host, new_port) == 200
    assert _refused(host, old_port)


def test_reload_keeps_old_listeners_when_a_new_one_cannot_bind(
    proxy_factory: ProxyFactory, loop_thread: LoopThread, host: str
) -> None:
    proxy = proxy_factory()
    server = proxy.server
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as taken:
        taken.bind((host, 0))
        taken.listen(1)
        busy = HostPort(host, taken.getsockname()[1])
        free = HostPort(host, _free_port(host))
        config = server.config
        new = dataclasses.replace(
            config, server=dataclasses.replace(config.server, listen=(free, busy))
        )
        with pytest.raises(ListenError, match=str(busy.port)):
            loop_thread.call(server.reload(new))
    assert [a.port for a in server.addresses] == [proxy.port]
    assert server.listening
    assert _get(host, proxy.port) == 200
    assert _refused(host, free.port)  # the half of the new set that did bind was let go


def test_a_request_arriving_across_a_reload_is_served_by_the_new_configuration(
    proxy_factory: ProxyFactory, loop_thread: LoopThread
) -> None:
    """A head half sent when the reload comes is new work: the new pools serve it.

    (The old generation's pools are closed by the reload; this request used to get 502.)
    """
    from tests.conftest import ResponseReader

    proxy = proxy_factory()
    with proxy.connect() as sock:
        sock.sendall(b"GET /echo?across=1 HTTP/1.1\r\nHost: example.test\r\n")
        config = proxy.server.config
        loop_thread.call(proxy.server.reload(dataclasses.replace(config)))
        sock.sendall(b"\r\n")
        response = ResponseReader(sock).read()
    assert response.status == 200
    assert response.header(b"connection") == b"close"  # the old generation is draining
    assert _get(proxy.host, proxy.port) == 200
