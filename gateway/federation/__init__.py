"""Federation: gateways on several network segments or sites sharing one set of clients, rules and devices
through a NATS cluster with JetStream (docs/operations.md "More than one gateway").

    federation/config.py     the home's enrolment (HOME/federation.json), enrolment tokens, bucket and subject names
    federation/keys.py       the federation key: sealing of everything stored in NATS, vouching between gateways
    federation/link.py       the NATS connection, its buckets, and whether the gateway is partitioned
    federation/identity.py   clients, keys, rules, tokens and device records: SQLite <-> JetStream key-value
    federation/placement.py  which gateway serves which device (leases), gateway heartbeats, remote presence
    federation/seqs.py       device sequence-number blocks leased from the shared store with compare-and-set
    federation/journal.py    the signed device request of each non-idempotent call, for a takeover's retry
    federation/forward.py    calls across gateways: a client's signed request relayed, and vouched requests
    federation/bridge.py     publications across gateways (a JetStream stream)
    federation/durable.py    durable subscriptions on JetStream, served by any gateway
    federation/opsync.py     operations mirrored for listing, routing and takeover
    federation/node.py       `Federation`: all of the above for one gateway, behind the seams the gateway offers

Only `node.py` and the modules it starts import `nats`; a gateway without `--federation` (and without an enrolled
home) never imports this package, so a single gateway behaves, and starts, exactly as before.
"""
