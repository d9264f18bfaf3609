"""python server.py: the serving device of the quick start.

It reads MainConf.conf, listens on TCP and on WebSocket (``ws://ADDRESS:PORT/tunnel``),
proves itself with the shared secret (a pair key, or a passphrase through PSTP-PAKE),
hands a token to a peer that asks, and serves one action, ``kettle``. Run it, then
``python client.py`` in another terminal. Ctrl-C stops it.

It is built on the library to show the moving parts; it keeps its tokens in memory and
does not enforce their expiry or use count. ``pstp serve`` is the real device: tokens in
SQLite, scopes, expiry, uses, revocation and an audit log (docs/protocol.md §20).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import tomllib
from pathlib import Path

import msgspec

from pstp import Channel, KeyRing
from pstp.asyncio.server import serve
from pstp.protocol.connection import Connection
from pstp.protocol.kinds import TokenGrant, TokenOpen
from pstp.protocol.pake import PakeVerifier
from pstp.protocol.tokens import new_token_id, token_label

CONF = Path(__file__).with_name("MainConf.conf")
TUNNEL = "/tunnel"


def read_conf() -> dict[str, object]:
    """MainConf.conf, with a fresh pair key written into it on the first run."""
    text = CONF.read_text(encoding="utf-8")
    conf = tomllib.loads(text)
    if not conf.get("Passphrase") and not conf.get("SharedSecret"):
        key = secrets.token_hex(32)
        text = text.replace('SharedSecret = ""', f'SharedSecret = "{key}"', 1)
        fd = os.open(CONF, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        CONF.chmod(0o600)
        print(f"wrote a fresh pair key into {CONF.name} (copy it to the client's machine)")
        conf["SharedSecret"] = key
    return conf


async def kettle(ch: Channel) -> int:
    """The one action: turn the kettle on (or off)."""
    command = (await ch.read_all(limit=64)).decode(errors="replace") or "on"
    await ch.write(f"kettle: {command}".encode())
    return 0


async def main() -> None:
    conf = read_conf()
    device, client = str(conf["DeviceID"]), str(conf["ClientID"])
    address, port, ws_port = str(conf["Address"]), int(conf["Port"]), int(conf["WebSocketPort"])
    ring = KeyRing()
    pake = None
    if conf.get("Passphrase"):
        passphrase = str(conf["Passphrase"]).encode()
        pake = PakeVerifier.from_code(passphrase, device, pairing=False, single_use=False)
    else:
        ring.add(client, bytes.fromhex(str(conf["SharedSecret"])))
    url = f"ws://{address}:{ws_port}{TUNNEL}"

    async def token(ch: Channel) -> int:
        """A token: its secret is derived from this session on both sides, never sent."""
        ask = TokenOpen.from_params(ch.params)
        conn: Connection = ch.connection
        token_id = new_token_id()
        ring.add_token(token_id, conn.peer_id or client, conn.export_secret(token_label(token_id)))
        grant = TokenGrant(
            id=token_id,
            expires=time.time() + ask.ttl,
            uses=ask.uses,
            kinds=[],
            actions=[],
            addresses=[url],
        )
        await ch.write(msgspec.msgpack.encode(grant))
        print(f"gave {conn.peer_id} token {token_id}, usable at {url}")
        return 0

    def only_kettle_with_a_token(conn: Connection, kind: str, params: object) -> str | None:
        """What a token session may do: the action, nothing else (a token begets no token)."""
        if conn.peer_token is not None and kind != "kettle":
            return "a token session may only use the kettle"
        return None

    handlers = {"kettle": kettle, "token": token}
    options = {"keyring": ring, "own_id": device, "handlers": handlers}
    tcp = await serve(None, address, port, pake=pake, authorize=only_kettle_with_a_token, **options)
    ws = await serve(
        None, address, ws_port, websocket=TUNNEL, authorize=only_kettle_with_a_token, **options
    )
    how = "passphrase (PSTP-PAKE)" if pake else "pair key (PSTP-HS)"
    print(f"{device}: serving on {address}:{port} and {url}, shared secret: {how}", flush=True)
    try:
        await asyncio.gather(tcp.serve_forever(), ws.serve_forever())
    finally:
        await tcp.close()
        await ws.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
        asyncio.run(main())
