"""The packets on both faces: TLV framing, the device protocol (docs/protocol.md) and the client<->gateway
protocol (docs/gateway-protocol.md). No I/O and no state: what is on the wire, encoded, parsed and verified."""
