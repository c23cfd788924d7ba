"""The gateway's external face: a REST API under `/api/v1` with an OpenAPI 3.1 document generated from the
devices' own descriptions, bearer tokens bound to client identities, subscriptions as Server-Sent Events, and a
web dashboard (docs/http.md).

    server.py    HttpFace: aiohttp in the gateway's loop, TLS, the address record
    api.py       the routes, each a verb of the verb table (`ndn_edge.clients.verbs`); auth and rate middleware
    events.py    GET /events: pub/sub and membership as Server-Sent Events
    openapi.py   the document, per token, with its ETag
    tokens.py    issuing, revoking and checking tokens (stored hashed)
    problems.py  errors as application/problem+json with the wire code
    values.py    JSON <-> the values devices take and give
    static/      the dashboard: plain HTML, CSS and JavaScript, no build step, no CDN

Importing this package loads nothing; aiohttp is imported by the modules that serve.
"""
