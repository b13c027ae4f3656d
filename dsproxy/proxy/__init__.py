"""The proxy: client connections, exchanges, routing, upstream pools, tunnels."""
