"""Network plumbing: address forms, listen sockets, upstream name resolution."""
