"""python client.py: the connecting device of the quick start (run server.py first).

It reads MainConf.conf, proves it holds the shared secret, receives a token and a
channel address, then connects there with the token alone and turns the kettle on.
"""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

from pstp.asyncio.client import connect
from pstp.client.tokens import request_token
from pstp.protocol.pake import PakeProver

CONF = Path(__file__).with_name("MainConf.conf")


async def main() -> None:
    conf = tomllib.loads(CONF.read_text(encoding="utf-8"))
    device, client = str(conf["DeviceID"]), str(conf["ClientID"])
    where = f"{conf['Address']}:{conf['Port']}"
    if conf.get("Passphrase"):
        prover = PakeProver(str(conf["Passphrase"]).encode(), client)
        first = await connect(where, pake=prover, device_id=device, own_id=client)
        print("→ 🔑 passphrase proven by SPAKE2+ (it never left this machine)")
    elif conf.get("SharedSecret"):
        key = bytes.fromhex(str(conf["SharedSecret"]))
        first = await connect(where, pair_key=key, device_id=device, own_id=client)
        challenge, response = first.connection.challenge_response
        print(f"→ 🔑 Received challenge: {challenge.hex()[:24]}...")
        print(f"→ 🤝 Response sent: {response.hex()[:24]}...")
    else:
        raise SystemExit("MainConf.conf has no secret yet: run server.py first")
    async with first:
        print(f"→ ✅ Authentication successful (session {first.session_id.hex()[:16]})")
        token = await request_token(first, ttl=600, uses=3, reason="quick start")
    print(f"→ 🚪 Received token: {token.id}")
    address = token.addresses[0]
    print(f"→ 🌐 Connecting to: {address}")
    async with await connect(
        address, pair_key=token.secret, device_id=device, own_id=client
    ) as second:
        answer = await second.request("kettle", b"on")
    print(f"→ {answer.decode()}")
    print("🎉 Done: the second connection used only the token.")


if __name__ == "__main__":
    asyncio.run(main())
