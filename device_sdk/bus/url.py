"""Broker addresses: `mqtt://` and `mqtts://` URLs with optional credentials, parsed and checked."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, quote, unquote, urlsplit

from device_sdk.protocol.errors import BusError


@dataclass(frozen=True)
class BrokerUrl:
    """`mqtt://[user[:password]@]host[:port]` or `mqtts://...[?ca=PATH]` (TLS, default port 8883).

    `ca` is the CA certificate file that the broker's certificate must chain to (default: the
    system's trusted CAs); it rides in the URL so that every client built from one can use it.
    A broker tier of several nodes is a list of hosts, `mqtt://user@node1:1883,node2:1883,node3`:
    a client connects to the first and, when a node does not answer, to the next (`nodes`); the
    credentials and the CA are the same for all.
    """

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca: str | None = None
    others: tuple[tuple[str, int], ...] = ()
    """The further nodes of a broker tier, tried in turn after `host`."""

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """Every node's (host, port), the first one first."""
        return ((self.host, self.port), *self.others)

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """`url` parsed and checked; an error names the URL without its password."""
        url = url if "://" in url else f"mqtt://{url}"
        scheme, _, rest = url.partition("://")
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))  # the hosts end
        netloc, tail = rest[:cut], rest[cut:]
        userinfo, at, hosts = netloc.partition("@") if "@" in netloc else ("", "", netloc)
        first, *more = hosts.split(",")
        parsed = cls._parse_one(f"{scheme}://{userinfo}{at}{first}{tail}")
        others = []
        for node in more:
            try:
                if "@" in node or not node:
                    raise BusError(
                        f"a further broker node is host[:port], not {node!r} (credentials go before the first)"
                    )
                one = cls._parse_one(f"{scheme}://{node}")
            except BusError as exc:
                shown = url.replace(f"{userinfo}@", f"{userinfo.split(':')[0]}:***@", 1) if ":" in userinfo else url
                raise BusError(f"{exc.text} (of {shown!r})") from None
            others.append((one.host, one.port))
        return replace(parsed, others=tuple(others)) if others else parsed

    @classmethod
    def _parse_one(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.password is not None:
            url = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise BusError(f"unsupported broker scheme {parts.scheme!r} in {url!r} (use mqtt:// or mqtts://)")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise BusError(f"bad port in broker URL {url!r}") from None
        if not parts.hostname:
            raise BusError(f"no host in broker URL {url!r}")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        query = parse_qs(parts.query, keep_blank_values=True)
        if set(query) - {"ca"} or len(query.get("ca", [])) > 1 or (query and not tls):
            raise BusError(f"a broker URL takes one query parameter, ca, with mqtts:// only: {url!r}")
        ca = query["ca"][0] if "ca" in query else None
        return cls(parts.hostname, port, user, password, tls, ca or None)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self._hosts()}"

    def _hosts(self) -> str:
        return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.nodes)

    def argument(self) -> str:
        """The URL for another process's command line: with the user and the CA, never the password
        (hand that over in `$DEVICE_SDK_BROKER_PASSWORD`)."""
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        ca = f"?ca={quote(self.ca, safe='/')}" if self.ca else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self._hosts()}{ca}"
