"""Closing the checker's HTTP side: TLS and basic auth, configured by a web config file in the
format Prometheus' own exporters read (``--web.config.file``)::

    tls_server_config:
      cert_file: /etc/host/tls.crt
      key_file: /etc/host/tls.key
      client_ca_file: /etc/host/ca.crt      # optional: with client_auth_type, mutual TLS
      client_auth_type: RequireAndVerifyClientCert
    basic_auth_users:
      prometheus: $2y$10$...                 # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':')

Either section may be left out. /healthz and /readyz stay open, so that a platform's probes
need no credentials; /metrics, the fleet page and /fleet.json need them.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker_config.settings import ConfigError

#: Paths served without credentials (platform probes).
OPEN_PATHS = ("/healthz", "/readyz")
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
                "RequireAnyClientCert": ssl.CERT_OPTIONAL,
                "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version"}
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}

Handler = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class WebConfig:
    """What the web config file says: an SSL context (None: plain HTTP) and the users."""

    tls: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)


def load(path: str) -> WebConfig:
    """Read and check a web config file ("" means none: plain HTTP, no auth).

    Raises:
        ConfigError: the file is unreadable, not YAML, has unknown keys, or its TLS files do
            not load; the message names the key.
    """
    if not path:
        return WebConfig()
    import yaml

    key = "HOST_WEB_CONFIG_FILE"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(key, path, f"cannot read it: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(key, path, "must be a YAML mapping")
    unknown = set(data) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise ConfigError(key, path, f"unknown key(s) {', '.join(sorted(unknown))}")
    base = Path(path).parent
    tls = _tls(data.get("tls_server_config"), base, path)
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict) or not all(
            isinstance(u, str) and isinstance(h, str) and h.startswith("$2") for u, h in users.items()):
        raise ConfigError(key, path, "basic_auth_users: a mapping of user to bcrypt hash")
    return WebConfig(tls, {u: h.encode() for u, h in users.items()})


def _tls(section: Any, base: Path, path: str) -> ssl.SSLContext | None:
    key = "HOST_WEB_CONFIG_FILE"
    if not section:
        return None
    if not isinstance(section, dict) or set(section) - _TLS_KEYS:
        raise ConfigError(key, path, f"tls_server_config: keys are {', '.join(sorted(_TLS_KEYS))}")
    if not section.get("cert_file") or not section.get("key_file"):
        raise ConfigError(key, path, "tls_server_config: cert_file and key_file are required")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS.get(str(section.get("min_version", "TLS12")),
                                        ssl.TLSVersion.TLSv1_2)
    try:
        ctx.load_cert_chain(base / section["cert_file"], base / section["key_file"])
        auth = str(section.get("client_auth_type", "NoClientCert"))
        if auth not in _CLIENT_AUTH:
            raise ConfigError(key, path, f"client_auth_type: one of {', '.join(_CLIENT_AUTH)}")
        ctx.verify_mode = _CLIENT_AUTH[auth]
        if section.get("client_ca_file"):
            ctx.load_verify_locations(base / section["client_ca_file"])
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(key, path, f"tls_server_config: {exc}") from None
    return ctx


def require_auth(handler: Handler, users: Mapping[str, bytes]) -> Handler:
    """``handler`` behind basic auth (bcrypt), except OPEN_PATHS; no users: unchanged."""
    if not users:
        return handler
    checked: dict[bytes, bool] = {}  # bcrypt costs ~50 ms: remember answers per header digest
    lock = threading.Lock()

    def allowed(header: str) -> bool:
        digest = hashlib.sha256(header.encode()).digest()
        with lock:
            if digest in checked:
                return checked[digest]
        ok = _check(header, users)
        with lock:
            if len(checked) > 1000:
                checked.clear()
            checked[digest] = ok
        return ok

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in OPEN_PATHS or allowed(environ.get("HTTP_AUTHORIZATION", "")):
            return handler(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                            ("WWW-Authenticate", 'Basic realm="host"')])
        return [b"unauthorized\n"]

    return guarded


def _check(header: str, users: Mapping[str, bytes]) -> bool:
    import bcrypt

    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    hashed = users.get(user)
    if hashed is None:
        bcrypt.checkpw(b"x", _DUMMY)  # the same time for an unknown user
        return False
    return bool(bcrypt.checkpw(password.encode(), hashed))


#: A hash nobody's password matches, checked for unknown users.
_DUMMY = b"$2b$10$" + b"." * 53
