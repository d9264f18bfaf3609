"""The OPEN parameters of each channel kind, typed (docs/protocol.md §17.4 to §17.8, §17.12).

Each kind has one struct, one encoder (:meth:`to_params`, the ``params`` map an
OPEN carries, §14.4) and one decoder (:meth:`from_params`, which validates and
raises :class:`BadParams`).  Both the device's handlers and the clients use
them, so the wire form of a kind is written once.  Sans-I/O: nothing here
reads or writes.

:class:`BadParams` is a :class:`~pstp.exceptions.ChannelFailure` with code
BAD_PARAMS (§14.4): a handler that lets it escape has its channel ended with
that code and the reason ``bad params: ...`` (§17.3).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import ClassVar, Literal

import msgspec

from pstp.exceptions import ChannelFailure
from pstp.protocol.streams import BAD_PARAMS
from pstp.wire.messages import ChannelCode, Params, ParamValue

__all__ = [
    "ARG_PREFIX",
    "GRANT_MAX",
    "KINDS",
    "LISTING_MAX",
    "TOKEN_KINDS",
    "ActionInfo",
    "ActionOpen",
    "ActionsOpen",
    "ArgInfo",
    "BadParams",
    "ExecOpen",
    "FileOpen",
    "ForwardInOpen",
    "ForwardOpen",
    "ListenOpen",
    "PingOpen",
    "ShellOpen",
    "TokenGrant",
    "TokenOpen",
    "action_args",
    "decode_grant",
    "decode_listing",
    "encode_listing",
]

#: Prefix of an action's argument keys in OPEN params (§17.6): ``arg.<name>``.
ARG_PREFIX = "arg."
#: A terminal type name (§17.5).
_TERM_RE = re.compile(r"[A-Za-z0-9._+-]{1,64}\Z")
_U16 = 0xFFFF
# A host name (253) or an address with a zone, with room to spare.
_HOST_MAX = 255


class BadParams(ChannelFailure):
    """The OPEN params of a channel are missing or invalid (BAD_PARAMS, §17.3).

    Args:
        explanation: what is wrong; the reason sent is ``bad params: `` + it.
    """

    def __init__(self, explanation: str) -> None:
        super().__init__(ChannelCode.BAD_PARAMS, f"{BAD_PARAMS}: {explanation}")
        self.explanation = explanation


def _reason(params: Mapping[str, object]) -> str | None:
    reason = params.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadParams("reason must be a string or nil")
    return reason


def action_args(params: Mapping[str, object]) -> dict[str, object]:
    """An action's ``arg.<name>`` params as ``{name: value}``, unchecked (§17.6).

    The policy checks and converts them (§17.10); this only undoes the encoding.
    """
    n = len(ARG_PREFIX)
    return {k[n:]: v for k, v in params.items() if k.startswith(ARG_PREFIX) and len(k) > n}


class ActionOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``action`` (§17.6).

    Attributes:
        name: the declared action's name.
        reason: why (policy and audit).
        args: the arguments, sent as ``arg.<name>`` keys (values unchecked here:
            the policy checks them against the action's schemas).
    """

    KIND: ClassVar[str] = "action"

    name: str
    reason: str | None = None
    args: dict[str, ParamValue] = msgspec.field(default_factory=dict)

    def to_params(self) -> Params:
        """The OPEN params map."""
        params: Params = {"name": self.name, "reason": self.reason}
        for key, value in self.args.items():
            params[ARG_PREFIX + key] = value
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> ActionOpen:
        """Decode and validate OPEN params.

        Raises:
            BadParams: ``name`` is not a string or ``reason`` not a string or nil.
        """
        name = params.get("name")
        if not isinstance(name, str):
            raise BadParams("name must be a string")
        args = action_args(params)
        return cls(name=name, reason=_reason(params), args=args)  # type: ignore[arg-type]


class ActionsOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``actions``, the listing of the actions the peer may run (§17.12).

    Attributes:
        reason: why (audit).
    """

    KIND: ClassVar[str] = "actions"

    reason: str | None = None

    def to_params(self) -> Params:
        """The OPEN params map."""
        return {"reason": self.reason}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> ActionsOpen:
        """Decode and validate OPEN params.

        Raises:
            BadParams: ``reason`` is not a string or nil.
        """
        return cls(reason=_reason(params))


#: The largest listing a device sends and a client accepts, in bytes (§17.12).
LISTING_MAX = 1 << 20

Number = int | float


class ArgInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One argument of a listed action, as its schema declares it (§17.12).

    Attributes:
        name: the argument's name (sent as ``arg.<name>``).
        type: ``"int"``, ``"float"``, ``"bool"`` or ``"str"``.
        required: whether it must be given (no default).
        default: the value when omitted, or nil.
        min: the least number allowed (numbers), or nil.
        max: the greatest number allowed (numbers), or nil.
        max_len: the longest string allowed (strings), or nil.
        choices: the strings allowed, if limited, or nil.
        pattern: a regular expression a string must match entirely, or nil.
    """

    name: str
    type: Literal["int", "float", "bool", "str"]
    required: bool
    default: str | int | float | bool | None = None
    min: Number | None = None
    max: Number | None = None
    max_len: int | None = None
    choices: list[str] | None = None
    pattern: str | None = None


class ActionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One action of a listing (§17.12).

    Attributes:
        name: the declared action's name.
        description: the owner's text for people ("" for none).
        args: its arguments, in name order.
    """

    name: str
    description: str = ""
    args: list[ArgInfo] = msgspec.field(default_factory=list)


_LISTING = msgspec.msgpack.Decoder(list[ActionInfo])


def encode_listing(actions: list[ActionInfo]) -> bytes:
    """The MessagePack array a device answers an ``actions`` channel with (§17.12)."""
    return msgspec.msgpack.encode(actions)


def decode_listing(data: bytes) -> list[ActionInfo]:
    """Decode a listing (unknown keys of a map are ignored, §17.12).

    Raises:
        ValueError: ``data`` is not one such MessagePack array, or is longer than
            :data:`LISTING_MAX`.
    """
    if len(data) > LISTING_MAX:
        raise ValueError(f"the listing is longer than {LISTING_MAX} bytes")
    try:
        return _LISTING.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed action listing: {exc}") from None


class ExecOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``exec`` (§17.4).

    Attributes:
        argv: the program and its arguments (non-empty, ``argv[0]`` not empty).
        reason: why (policy and audit).
    """

    KIND: ClassVar[str] = "exec"

    argv: list[str]
    reason: str | None = None

    def to_params(self) -> Params:
        """The OPEN params map."""
        return {"argv": list(self.argv), "reason": self.reason}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> ExecOpen:
        """Decode and validate OPEN params.

        Raises:
            BadParams: ``argv`` is not a non-empty list of strings with a non-empty
                first one, or ``reason`` is not a string or nil.
        """
        argv = params.get("argv")
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) for a in argv)
            or not argv[0]
        ):
            raise BadParams("argv must be a non-empty list of strings")
        return cls(argv=list(argv), reason=_reason(params))


class ShellOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``shell`` (§17.5).

    Attributes:
        term: the terminal type.
        rows: the window's height.
        cols: the window's width.
        reason: why (policy and audit).
        pty: run the shell on a pseudo-terminal (the default); false: with pipes,
            standard output and error apart, as ``ssh -T`` does.
    """

    KIND: ClassVar[str] = "shell"

    term: str = "dumb"
    rows: int = 24
    cols: int = 80
    reason: str | None = None
    pty: bool = True

    def to_params(self) -> Params:
        """The OPEN params map (``pty`` only when false: absent means a terminal)."""
        params: Params = {
            "term": self.term,
            "rows": self.rows,
            "cols": self.cols,
            "reason": self.reason,
        }
        if not self.pty:
            params["pty"] = False
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> ShellOpen:
        """Decode and validate OPEN params (absent keys take their defaults).

        Raises:
            BadParams: a bad terminal type, a size outside 0..65535 or a bool, a
                ``reason`` that is not a string or nil, or a ``pty`` that is not a bool.
        """
        term = params.get("term", "dumb")
        if not isinstance(term, str) or not _TERM_RE.match(term):
            raise BadParams("term must be a terminal type name")
        size: dict[str, int] = {}
        for name, default in (("rows", 24), ("cols", 80)):
            value = params.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U16:
                raise BadParams(f"{name} must be an integer in 0..65535")
            size[name] = value
        reason = _reason(params)
        pty = params.get("pty", True)
        if not isinstance(pty, bool):
            raise BadParams("pty must be a bool")
        return cls(term=term, rows=size["rows"], cols=size["cols"], reason=reason, pty=pty)


class PingOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``ping`` (§17.7): none; whatever arrives is ignored."""

    KIND: ClassVar[str] = "ping"

    def to_params(self) -> Params:
        """The OPEN params map (empty)."""
        return {}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> PingOpen:
        """Decode OPEN params: they are ignored, so this never fails."""
        return cls()


class FileOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``file`` (§17.8, §18).

    Attributes:
        op: ``"put"`` or ``"get"``.
        path: the device-side path.
        force: put: replace existing files with different content.
        into: put: the sources land under ``path`` (a directory).
        reason: why (policy and audit).
    """

    KIND: ClassVar[str] = "file"

    op: Literal["put", "get"]
    path: str
    force: bool = False
    into: bool = False
    reason: str | None = None

    def to_params(self) -> Params:
        """The OPEN params map (a get carries no ``force`` or ``into``)."""
        params: Params = {"op": self.op, "path": self.path}
        if self.op == "put":
            params["force"] = self.force
            params["into"] = self.into
        params["reason"] = self.reason
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> FileOpen:
        """Decode and validate OPEN params as the device reads them today.

        ``force`` and ``into`` are true only if they are the boolean true; a
        ``reason`` that is not a string counts as none (§18).

        Raises:
            BadParams: ``op`` is not put or get, or ``path`` is not a string.
        """
        op, path = params.get("op"), params.get("path")
        if op not in ("put", "get") or not isinstance(path, str):
            raise BadParams("op must be put or get, and path a string")
        reason = params.get("reason")
        return cls(
            op="put" if op == "put" else "get",
            path=path,
            force=params.get("force") is True,
            into=params.get("into") is True,
            reason=reason if isinstance(reason, str) else None,
        )


class ForwardOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``forward`` (§17.14): connect to ``host:port`` and carry its bytes.

    The device connects to the target once the policy allows it, then the
    channel's data is the TCP connection's, each way, with half-close.

    Attributes:
        host: the host the device connects to (a name or an IP address).
        port: its TCP port, 1 to 65535.
        reason: why (policy and audit).
    """

    KIND: ClassVar[str] = "forward"

    host: str
    port: int
    reason: str | None = None

    def to_params(self) -> Params:
        """The OPEN params map."""
        return {"host": self.host, "port": self.port, "reason": self.reason}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> ForwardOpen:
        """Decode and validate OPEN params.

        Raises:
            BadParams: an empty, over-long or missing host, a port outside
                1..65535, or a ``reason`` that is not a string or nil.
        """
        host, port = params.get("host"), params.get("port")
        if not isinstance(host, str) or not host:
            raise BadParams("host must be a non-empty string")
        if len(host) > _HOST_MAX:
            raise BadParams(f"host must be at most {_HOST_MAX} characters")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= _U16:
            raise BadParams("port must be an integer in 1..65535")
        return cls(host=host, port=port, reason=_reason(params))


class ListenOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``forward-listen`` (§17.15): the device listens for the peer.

    While the channel is open the device accepts TCP connections on
    ``host:port`` and hands each to the peer in a ``forward-in`` channel it
    opens.  Its first data on this channel is the address it bound, as UTF-8
    ``HOST:PORT`` and a newline (the port a ``port`` of 0 got).

    Attributes:
        host: the address to listen on (default ``127.0.0.1``).
        port: the TCP port, 0 to 65535 (0: any free port).
        reason: why (policy and audit).
    """

    KIND: ClassVar[str] = "forward-listen"

    port: int
    host: str = "127.0.0.1"
    reason: str | None = None

    def to_params(self) -> Params:
        """The OPEN params map."""
        return {"host": self.host, "port": self.port, "reason": self.reason}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> ListenOpen:
        """Decode and validate OPEN params.

        Raises:
            BadParams: a host that is not an IP address, or a port outside 0..65535.
        """
        host, port = params.get("host", "127.0.0.1"), params.get("port")
        if not isinstance(host, str) or not _is_ip(host):
            raise BadParams("host must be an IP address to listen on")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _U16:
            raise BadParams("port must be an integer in 0..65535")
        return cls(host=host, port=port, reason=_reason(params))


class ForwardInOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``forward-in`` (§17.15), opened by the device toward the peer.

    One per connection the device accepted for a ``forward-listen`` channel;
    its data is that connection's, each way, with half-close.

    Attributes:
        listen: the channel id of the ``forward-listen`` channel it belongs to.
        origin: who connected, ``HOST:PORT`` (for the peer's log).
    """

    KIND: ClassVar[str] = "forward-in"

    listen: int
    origin: str = ""

    def to_params(self) -> Params:
        """The OPEN params map."""
        return {"listen": self.listen, "origin": self.origin}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> ForwardInOpen:
        """Decode and validate OPEN params.

        Raises:
            BadParams: ``listen`` is not a channel id, or ``origin`` not a short string.
        """
        listen, origin = params.get("listen"), params.get("origin", "")
        if isinstance(listen, bool) or not isinstance(listen, int) or not 0 <= listen < 1 << 32:
            raise BadParams("listen must be a channel id")
        if not isinstance(origin, str) or len(origin) > _HOST_MAX:
            raise BadParams(f"origin must be a string of at most {_HOST_MAX} characters")
        return cls(listen=listen, origin=origin)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


#: The channel kinds a token's scope may name (§17.13).
TOKEN_KINDS = ("ping", "action", "actions", "exec", "shell", "file")
_SCOPE_ITEM = re.compile(r"[A-Za-z0-9_.*?\[\]!-]{1,128}")


def _scope_list(params: Mapping[str, object], key: str) -> list[str]:
    value = params.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 32:
        raise BadParams(f"{key} must be nil or an array of at most 32 strings")
    if not all(isinstance(i, str) and _SCOPE_ITEM.fullmatch(i) for i in value):
        raise BadParams(f"{key} must hold names or globs (letters, digits, . _ - * ? [ ] !)")
    return list(value)


class TokenOpen(msgspec.Struct, frozen=True, kw_only=True):
    """OPEN params of ``token``: a token derived from this session (§17.13, §20).

    Attributes:
        ttl: seconds the token lives (60 to 2 592 000).
        uses: handshakes it may open, or nil for no limit.
        kinds: channel kinds it may open (empty: as the peer).
        actions: action names or globs it may run (empty: as the peer).
        reason: why (audit).
    """

    KIND: ClassVar[str] = "token"

    ttl: int
    uses: int | None = None
    kinds: list[str] = msgspec.field(default_factory=list)
    actions: list[str] = msgspec.field(default_factory=list)
    reason: str | None = None

    def to_params(self) -> Params:
        """The OPEN params map."""
        return {
            "ttl": self.ttl,
            "uses": self.uses,
            "kinds": list(self.kinds) or None,
            "actions": list(self.actions) or None,
            "reason": self.reason,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> TokenOpen:
        """Decode and validate OPEN params.

        Raises:
            BadParams: ``ttl`` not an integer in 60..2592000, ``uses`` not nil or a
                positive integer up to 1 000 000, ``kinds``/``actions`` malformed.
        """
        ttl = params.get("ttl")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 60 <= ttl <= 2_592_000:
            raise BadParams("ttl must be an integer in 60..2592000")
        uses = params.get("uses")
        if uses is not None and (
            isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= 1_000_000
        ):
            raise BadParams("uses must be nil or an integer in 1..1000000")
        kinds = _scope_list(params, "kinds")
        if not set(kinds) <= set(TOKEN_KINDS):
            raise BadParams(f"kinds must be among {', '.join(TOKEN_KINDS)}")
        return cls(
            ttl=ttl,
            uses=uses,
            kinds=kinds,
            actions=_scope_list(params, "actions"),
            reason=_reason(params),
        )


class TokenGrant(msgspec.Struct, frozen=True, kw_only=True):
    """The answer on a ``token`` channel: the token, without its secret (§17.13).

    Attributes:
        id: the token's public id (``tok_`` and 12 base-32 letters).
        expires: its end of life, Unix seconds.
        uses: handshakes it may open, or nil.
        kinds: the channel kinds it may open (empty: as the peer).
        actions: the action globs it may run (empty: as the peer).
        addresses: channel addresses of the device (§19.1), the advertised ones first.
    """

    id: str
    expires: float
    uses: int | None
    kinds: list[str]
    actions: list[str]
    addresses: list[str]


#: The largest token grant a client accepts, in bytes.
GRANT_MAX = 1 << 16


def decode_grant(data: bytes) -> TokenGrant:
    """Read a ``token`` channel's answer.

    Raises:
        BadParams: not a grant, or larger than :data:`GRANT_MAX`.
    """
    if len(data) > GRANT_MAX:
        raise BadParams("the token grant is too large")
    try:
        return msgspec.msgpack.decode(data, type=TokenGrant)
    except msgspec.DecodeError as exc:
        raise BadParams(f"malformed token grant: {exc}") from None


#: Each kind's params struct, by kind name.
KINDS: dict[
    str,
    type[ActionOpen]
    | type[ActionsOpen]
    | type[ExecOpen]
    | type[ShellOpen]
    | type[PingOpen]
    | type[FileOpen]
    | type[ForwardOpen]
    | type[TokenOpen],
] = {
    cls.KIND: cls
    for cls in (
        ActionOpen,
        ActionsOpen,
        ExecOpen,
        ShellOpen,
        PingOpen,
        FileOpen,
        ForwardOpen,
        TokenOpen,
    )
}
