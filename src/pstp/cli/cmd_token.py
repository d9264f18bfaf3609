"""``pstp token issue|list|revoke|import``: scoped, expiring keys (docs/protocol.md §20).

On the device: ``issue`` writes a guest credential to the token store and
shows it as a ``pstp://`` link (and a QR code); ``list`` and ``revoke`` manage
what is there (a running daemon sees a change within a quarter of a second
and closes the sessions of a revoked token).  On the other device: ``import``
reads such a link from standard input or a file, never from the command line,
and stores it as a peer that ``pstp ping`` and ``pstp run`` then reach.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pstp.cli.common import load_settings, print_table
from pstp.cli.main import EXIT_NO, Console

__all__ = ["import_", "issue", "list_", "revoke"]


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def issue(args: argparse.Namespace, console: Console) -> int:
    """Issue a guest credential and print its link (and QR code)."""
    from pstp.cli.cmd_pair import reachable_addresses
    from pstp.daemon.pairing import link_uri
    from pstp.daemon.tokens import (
        TokenError,
        TokenStore,
        encode_token_string,
        guest_policies,
        parse_ttl,
        tokens_path,
    )
    from pstp.settings import ConfigError, check_channel

    settings = load_settings(args)
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        console.error(str(exc))
        return 2
    via = []
    for text in args.via or [str(a) for a in settings.advertise]:
        try:
            via.append(str(check_channel(text)))
        except ValueError as exc:
            console.error(f"--via: {exc}")
            return 2
    store = TokenStore(tokens_path(settings))
    try:
        token = store.issue(
            args.peer,
            ttl=ttl,
            max_uses=args.uses,
            kinds=args.kind or (),
            actions=args.allow or (),
        )
        try:  # a guest's scope must name declared actions (checked as the daemon will)
            guest_policies(settings, [token])
        except ConfigError as exc:
            store.revoke(token.id)
            console.error(f"--allow: {exc}")
            return 2
    except TokenError as exc:
        console.error(str(exc))
        return 2
    finally:
        store.close()
    host, port = settings.listen[0]
    hosts = [r.host for r in reachable_addresses(host)]
    string = encode_token_string(token.id, token.secret)
    uri = link_uri("token", hosts, port, via=via, id=settings.device_id, token=string)
    guest = args.peer not in settings.peers
    scope = ", ".join(token.actions) or ("nothing" if guest else "as the peer")
    uses = "unlimited" if token.max_uses is None else str(token.max_uses)
    if args.json:
        console.print(json.dumps(token.to_public() | {"uri": uri}))
        return 0
    console.print(f"issued {token.id} for {args.peer}{' (a guest)' if guest else ''}")
    console.print(f"  actions: {scope}; uses: {uses}; expires {_when(token.expires)}")
    console.print("Give the other device this link (it is a key: send it privately);")
    console.print("there, `pstp token import NAME` reads it from standard input:")
    console.print(uri)
    if args.qr or (args.qr is None and sys.stdout.isatty()):
        import segno

        segno.make(uri, error="m").terminal(out=console.out, compact=True)
    console.print(f"revoke it with: pstp token revoke {token.id}")
    return 0


def list_(args: argparse.Namespace, console: Console) -> int:
    """List the device's tokens (never their secrets)."""
    from pstp.daemon.tokens import TokenStore, tokens_path

    settings = load_settings(args)
    path = tokens_path(settings)
    if not path.exists():
        tokens = []
    else:
        store = TokenStore(path)
        try:
            tokens = store.all()
        finally:
            store.close()
    now = time.time()
    if args.json:
        listed = [t.to_public() | {"state": t.why_not(now) or "live"} for t in tokens]
        console.print(json.dumps(listed))
        return 0
    if not tokens:
        console.print("no tokens (issue one with `pstp token issue --peer NAME ...`)")
        return 0
    rows: list[tuple[str, ...]] = []
    for t in tokens:
        scope = ", ".join([*t.kinds, *t.actions]) or "as the peer"
        uses = f"{t.uses}/{t.max_uses}" if t.max_uses is not None else str(t.uses)
        why = t.why_not(now)
        state = "live" if why is None else why.split(" ", 2)[-1]
        rows.append((t.id, t.peer, uses, _when(t.expires), state, scope))
    print_table(console, ("ID", "PEER", "USES", "EXPIRES", "STATE", "SCOPE"), rows)
    return 0


def revoke(args: argparse.Namespace, console: Console) -> int:
    """Revoke a token: its live sessions end within a quarter of a second."""
    from pstp.daemon.tokens import TokenStore, tokens_path

    settings = load_settings(args)
    store = TokenStore(tokens_path(settings))
    try:
        done = store.revoke(args.id)
    finally:
        store.close()
    if not done:
        console.error(f"no live token {args.id!r} (see `pstp token list`)")
        return EXIT_NO
    console.print(f"revoked {args.id}; a running daemon closes its sessions now")
    return 0


def import_(args: argparse.Namespace, console: Console) -> int:
    """Store a guest credential (a pstp://.../token link) as the peer NAME."""
    from pstp.daemon.pairing import parse_link
    from pstp.protocol.tokens import decode_token_string
    from pstp.settings import ConfigError, add_peer, check_channel, format_address

    settings = load_settings(args)
    if args.name in settings.peers and not args.replace:
        console.error(f"{args.name!r} already exists (use --replace to overwrite it)")
        return 2
    if args.file:
        text = Path(args.file).read_text(encoding="utf-8")
    else:
        if sys.stdin.isatty():
            console.print("paste the pstp://…/token link, then Enter:")
        text = sys.stdin.readline()
    try:
        link = parse_link(text.strip())
        if link.kind != "token":
            raise ValueError(f"a {link.kind!r} link, not a token link")
        token_id, secret = decode_token_string(link.params.get("token", ""))
        device = link.params.get("id", "")
    except ValueError as exc:
        console.error(f"not a token link: {exc}")
        return 2
    # The first address that is not a broker's is the one tried first; the rest (a
    # broker among them) go to `via`, for the reach ladder.
    direct = [v for v in link.via if not check_channel(v).mqtt]
    address = direct[0] if direct else format_address(*link.addresses[0])
    extra: dict[str, str | list[str]] = {"token": token_id}
    if device != args.name:
        extra["device"] = device
    if rest := [v for v in link.via if v != address]:
        extra["via"] = rest
    try:
        add_peer(settings.path, args.name, secret, address=address, extra=extra)
    except ConfigError as exc:
        console.error(str(exc))
        return 2
    console.print(f"stored {token_id} for {device!r} as peer {args.name!r} at {address}")
    console.print(f"try: pstp ping {args.name}")
    return 0
