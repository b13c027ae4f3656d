"""Tools around the proxy: the demo gateway and the dual-stack probe."""
