"""Where a Redis is: one address (``redis://``, ``rediss://``, ``unix://``) or whichever server a
group of Sentinels names master right now (``sentinel://``).

A Sentinel URL lists the sentinels, separated by ``;``, in the form kombu and Celery take for
the broker and the result backend, so one value serves all three::

    sentinel://:master-password@s1:26379;sentinel://s2:26379;sentinel://s3:26379/0

The master's name, the sentinels' own password and TLS are not part of the URL (neither kombu
nor Celery reads them there): they come from ``HOST_SENTINEL_*`` and travel with the URL as
``SentinelOptions``. A client made here asks the sentinels for the master on every new
connection, so after a failover the next reconnect reaches the new master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SCHEME = "sentinel"
DEFAULT_PORT = 26379
SEPARATOR = ";"


@dataclass(frozen=True, slots=True)
class SentinelOptions:
    """What a ``sentinel://`` URL needs besides the sentinels' addresses.

    Args:
        master: the name the sentinels monitor the master under (``sentinel monitor <name>``).
        password: the sentinels' own password (``requirepass`` in sentinel.conf), if any; the
            master's password is the URL's.
        tls: TLS to the sentinels and to the master they name.
        tls_ca_file: the CA that signed their certificates (the system's CAs when empty).
    """

    master: str = ""
    password: str = ""
    tls: bool = False
    tls_ca_file: str = ""

    def tls_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments for TLS (none without it)."""
        if not self.tls:
            return {}
        return {"ssl": True, **({"ssl_ca_certs": self.tls_ca_file} if self.tls_ca_file else {})}

    def sentinel_kwargs(self, **socket: Any) -> dict[str, Any]:
        """Arguments of the connections to the sentinels themselves."""
        return {**socket, **({"password": self.password} if self.password else {}),
                **self.tls_kwargs()}


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed ``sentinel://`` URL: the sentinels, the database and the master's credentials."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A Redis URL with what reaching it needs besides (the Sentinel options of a sentinel://).

    Args:
        url: a redis://, rediss://, unix:// or sentinel:// URL.
        sentinel: the master's name and the rest, for a sentinel:// URL.
    """

    url: str
    sentinel: SentinelOptions = SentinelOptions()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client (see ``client``)."""
        return client(self.url, self.sentinel, **kwargs)

    @property
    def db(self) -> int:
        """The database number the URL names."""
        return db_of(self.url)

    def __str__(self) -> str:
        return redacted(self.url)


def address(where: RedisAddress | str) -> RedisAddress:
    """``where`` as an address: a plain URL needs nothing more."""
    return where if isinstance(where, RedisAddress) else RedisAddress(where)


def is_sentinel(url: str) -> bool:
    """True for a ``sentinel://`` URL."""
    return url.split(":", 1)[0].lower() == SCHEME


def parse(url: str) -> SentinelUrl:
    """The sentinels of a ``sentinel://`` URL, the database and credentials of its first part
    that gives them.

    Raises:
        ValueError: one line saying what is wrong (a part of another scheme, no host, a port or
            database that is not a number).
    """
    sentinels: list[tuple[str, int]] = []
    db: int | None = None
    username = password = None
    for chunk in url.split(SEPARATOR):
        if not chunk.strip():
            continue
        parts = urlsplit(chunk.strip())
        if parts.scheme != SCHEME:
            raise ValueError(f"every part must be sentinel://host:port (got {parts.scheme}://)")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError("port is not a number") from None
        if not parts.hostname:
            raise ValueError("a sentinel has no host")
        sentinels.append((parts.hostname, port))
        path = parts.path.strip("/")
        if path and db is None:
            if not path.isdigit():
                raise ValueError(f"database {path!r} is not a number")
            db = int(path)
        if parts.password is not None and password is None:
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password)
    if not sentinels:
        raise ValueError("names no sentinel")
    return SentinelUrl(tuple(sentinels), db or 0, username, password)


def problem(url: str) -> str | None:
    """Why ``url`` is not a usable sentinel:// URL (None when it is)."""
    try:
        parse(url)
    except ValueError as exc:
        return str(exc)
    return None


def client(url: str, sentinel: SentinelOptions | None = None, **kwargs: Any) -> redis.Redis:
    """A redis-py client for ``url``; ``kwargs`` as ``redis.Redis.from_url`` takes them.

    For a ``sentinel://`` URL the client reaches the master the sentinels name (its socket
    timeouts also bound each question to a sentinel).

    Raises:
        ValueError: a sentinel:// URL without a master name, or a bad URL.
    """
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    options = sentinel or SentinelOptions()
    if not options.master:
        raise ValueError("a sentinel:// URL needs the master's name (HOST_SENTINEL_MASTER)")
    where = parse(url)
    socket = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    credentials: dict[str, Any] = {k: v for k, v in (("username", where.username),
                                                     ("password", where.password)) if v is not None}
    group = Sentinel(list(where.sentinels), sentinel_kwargs=options.sentinel_kwargs(**socket),
                     **kwargs, **options.tls_kwargs())
    master: redis.Redis = group.master_for(options.master, db=where.db, **credentials)
    return master


def db_of(url: str) -> int:
    """The database number a Redis or Sentinel URL names (0 when it names none)."""
    if is_sentinel(url):
        return parse(url).db
    return int(redis.Redis.from_url(url).connection_pool.connection_kwargs.get("db", 0))


def redacted(url: str) -> str:
    """``url`` without passwords, each sentinel's part on its own."""
    from kombu.utils.url import maybe_sanitize_url

    return SEPARATOR.join(str(maybe_sanitize_url(part)) for part in url.split(SEPARATOR))
