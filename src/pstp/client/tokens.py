"""Ask a device for a token over a session, and use it (docs/protocol.md §17.13, §20).

A token is derived from the session it was asked on: the device answers the
id, scope and addresses; both sides compute the secret,
``export("token " + id)`` (§5.6), so it never travels.  A later connection
to any of the addresses, on any transport, uses the secret exactly as a pair
key (:func:`pstp.asyncio.client.connect` with ``pair_key=token.secret``).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from pstp.asyncio.connection import Session
from pstp.exceptions import RemoteProtocolError
from pstp.protocol.kinds import BadParams, TokenOpen, decode_grant
from pstp.protocol.tokens import encode_token_string, token_label, valid_token_id

__all__ = ["IssuedToken", "request_token"]


class IssuedToken(msgspec.Struct, frozen=True):
    """A token the device granted, with the secret derived on this side.

    Attributes:
        id: its public id.
        device_id: the device that granted it.
        secret: 32 bytes, used as a pair key (never printed).
        expires: end of life, Unix seconds.
        uses: handshakes it may open, or None.
        kinds: channel kinds it may open (empty: as the peer).
        actions: action globs it may run (empty: as the peer).
        addresses: the device's channel addresses, advertised ones first.
    """

    id: str
    device_id: str
    secret: bytes
    expires: float
    uses: int | None
    kinds: tuple[str, ...]
    actions: tuple[str, ...]
    addresses: tuple[str, ...]

    def __repr__(self) -> str:  # never the secret
        return f"IssuedToken(id={self.id!r}, device_id={self.device_id!r})"

    @property
    def string(self) -> str:
        """The token as one ``pstp_tok_...`` string (§20.3): as secret as a pair key."""
        return encode_token_string(self.id, self.secret)


async def request_token(
    session: Session,
    *,
    ttl: int,
    uses: int | None = None,
    kinds: Sequence[str] = (),
    actions: Sequence[str] = (),
    reason: str | None = None,
) -> IssuedToken:
    """Ask the device for a token derived from ``session``.

    Args:
        session: an established session (with a pair key: a token session may not
            ask for tokens).
        ttl: seconds the token lives (60 to 2 592 000).
        uses: handshakes it may open, or None for no limit.
        kinds: channel kinds it may open (empty: those the peer may).
        actions: action names or globs it may run (empty: those the peer may).
        reason: why (the device's audit log).

    Raises:
        ChannelError: the device refused (its policy, a limit, a token session).
        RemoteProtocolError: the answer is malformed.
    """
    params = TokenOpen(
        ttl=ttl, uses=uses, kinds=list(kinds), actions=list(actions), reason=reason
    ).to_params()
    answer = await session.request(TokenOpen.KIND, b"", params)
    try:
        grant = decode_grant(answer)
    except BadParams as exc:
        raise RemoteProtocolError(str(exc)) from None
    if not valid_token_id(grant.id):
        raise RemoteProtocolError("the device granted a malformed token id")
    secret = session.connection.export_secret(token_label(grant.id))
    return IssuedToken(
        grant.id,
        session.peer_id,
        secret,
        grant.expires,
        grant.uses,
        tuple(grant.kinds),
        tuple(grant.actions),
        tuple(grant.addresses),
    )
