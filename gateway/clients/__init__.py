"""The client-facing side of the gateway: the UDP face that authenticates signed client requests and the verbs
they may call, checked against the access rules."""
