"""``dsproxy demo``: the demo gateway (``tools/demo_gateway.py``) behind the proxy.

The proxy listens on ``[::]:16980`` (both families) and forwards to the gateway on
127.0.0.1; the commands printed at start work with what the install provides.
"""

from __future__ import annotations

from collections.abc import Sequence

from dsproxy.config import (
    AdminConfig,
    Config,
    ServerConfig,
    ShutdownConfig,
    UpstreamConfig,
    UpstreamServer,
)
from dsproxy.net.addr import HostPort
from dsproxy.tools.demo_gateway import DEFAULT_DEMO_LISTEN, start_demo_gateway


def demo_config(listen: HostPort, gateway_port: int) -> Config:
    """The proxy config ``dsproxy demo`` runs: ``listen`` -> the gateway on loopback."""
    return Config(
        server=ServerConfig(listen=(listen,)),
        upstream=UpstreamConfig(servers=(UpstreamServer("127.0.0.1", gateway_port),)),
        # The demo must start on a busy machine: no admin listener to collide with.
        admin=AdminConfig(listen=None),
        # Nothing load-balances a demo: Ctrl-C needs no readiness delay before draining.
        shutdown=ShutdownConfig(delay=0.0, grace=5.0),
    )


def demo_instructions(bound: Sequence[HostPort], gateway_port: int) -> str:
    """Copy-paste commands to try the proxy listening on ``bound``."""
    v4: HostPort | None = None
    v6: HostPort | None = None
    for address in bound:
        if address.host == "::":  # dual-stack: the demo never sets ipv6only
            v4 = v4 or HostPort("127.0.0.1", address.port)
            v6 = v6 or HostPort("::1", address.port)
        elif address.host == "0.0.0.0":
            v4 = v4 or HostPort("127.0.0.1", address.port)
        elif address.is_ipv6:
            v6 = v6 or address
        else:
            v4 = v4 or address
    listening = ", ".join(str(address) for address in bound)
    lines = [
        f"dsproxy demo: proxy on {listening} -> demo gateway http://127.0.0.1:{gateway_port}",
        "try:",
    ]
    if v4 is not None:
        lines.append(f"  curl -4 http://{v4}/hello")
    if v6 is not None:
        lines.append(f"  curl -6 'http://{v6}/hello'")
    if v4 is not None and v6 is not None and v4.port == v6.port and v4.host == "127.0.0.1":
        lines.append(f"  dsproxy probe http://localhost:{v4.port} --ws /ws")
    else:
        for reachable in (v4, v6):
            if reachable is not None:
                lines.append(f"  dsproxy probe 'http://{reachable}' --ws /ws")
    lines.append("Ctrl-C stops it.")
    return "\n".join(lines)


async def _run_demo(listen: HostPort) -> int:
    from dsproxy.app.serve import serve

    gateway = await start_demo_gateway()
    try:

        def ready(bound: list[HostPort]) -> None:
            print(demo_instructions(bound, gateway.port), flush=True)

        return await serve(demo_config(listen, gateway.port), ready=ready)
    finally:
        await gateway.close()


def main(listen: HostPort | None) -> int:
    """``dsproxy demo [--listen ADDR]``: the demo gateway behind a proxy on ``listen``."""
    from dsproxy.app.runner import run_main

    return run_main(_run_demo(listen or DEFAULT_DEMO_LISTEN))
