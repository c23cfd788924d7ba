"""Where and how the gateway's HTTP face listens (`--http`, `--http-cert`, `--http-key`, or `"http"` in
HOME/config.json). Apart from the face itself (`ndn_edge.http.server`), so that a gateway started without HTTP
reads its options without importing aiohttp (about 0.15 s of CPU at every start)."""
from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path

from ndn_edge.errors import ConfigError

CONFIG = "config.json"


@dataclass(frozen=True)
class HttpOptions:
    """Where and how the HTTP face listens."""

    listen: tuple[str, int]
    cert: str | None = None
    key: str | None = None

    @property
    def tls(self) -> bool:
        return self.cert is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None for plain HTTP; ConfigError naming the file that fails to load."""
        if self.cert is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"cannot load the HTTPS certificate {self.cert} and key {self.key or self.cert}: "
                              f"{err}; give a PEM certificate with --http-cert and its key with --http-key") from err
        return ctx


def options_from_config(home_path: Path) -> HttpOptions | None:
    """The `"http"` entry of HOME/config.json (`{"http": {"listen": "HOST:PORT", "cert", "key"}}`), or None."""
    path = home_path / CONFIG
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); fix or remove it") from err
    http = obj.get("http") if isinstance(obj, dict) else None
    if http is None:
        return None
    if not isinstance(http, dict) or not isinstance(http.get("listen"), str):
        raise ConfigError(f'{path}: "http" must be {{"listen": "HOST:PORT", "cert": PATH, "key": PATH}}')
    host, _, port = http["listen"].rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f'{path}: "http.listen" must be HOST:PORT, got {http["listen"]!r}')
    return HttpOptions((host.strip("[]"), int(port)), cert=http.get("cert"), key=http.get("key"))
