"""The Python client library, the only part of ndn_edge applications import: `Client` and `BlockingClient`
(`api`), and the handles they return for operations and subscriptions (`handles`)."""
