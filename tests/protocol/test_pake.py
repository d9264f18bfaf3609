"""Tests for pstp.protocol.pake through the sans-I/O Connection: PSTP-PAKE (SPAKE2+)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from pstp.exceptions import ErrorCode, HandshakeFailed, LocalProtocolError, RemoteProtocolError
from pstp.protocol.config import Config
from pstp.protocol.connection import Connection, ConnectionState, Role
from pstp.protocol.events import ConnectionTerminated, DataReceived, HandshakeCompleted
from pstp.protocol.handshake import SessionKeys
from pstp.protocol.pake import (
    MAX_ITERATIONS,
    PairHello,
    PakeInitiator,
    PakeProver,
    PakeResponder,
    PakeVerifier,
    Passphrase,
)
from pstp.wire.frames import VERSION, FrameType, PairReq, PairResp, Suite
from tests.helpers import Pair, feed_all_ways

CODE = b"31415926"
_VERIFIERS: dict[tuple[bool, bool], PakeVerifier] = {}


def verifier(*, pairing: bool = True, **kw: object) -> PakeVerifier:
    """A verifier for CODE (PBKDF2 runs once per test, ~20 ms)."""
    return PakeVerifier.from_code(CODE, "home", pairing=pairing, **kw)  # type: ignore[arg-type]


def pake_pair(
    v: PakeVerifier,
    code: bytes = CODE,
    *,
    pairing: bool = True,
    config: Config | None = None,
    responder_id: str | None = "home",
) -> Pair:
    """A started client/server pair speaking PSTP-PAKE."""
    client = Connection(
        Role.CLIENT,
        config,
        pake=PakeProver(code, "phone", pairing=pairing),
        responder_id=responder_id,
    )
    server = Connection(Role.SERVER, config, own_id="home", pake=v)
    pair = Pair(client, server)
    server.start(pair.clock.now)
    client.start(pair.clock.now)
    return pair


def frames(data: bytes) -> list[bytes]:
    """Split a byte stream into whole frames."""
    out, pos = [], 0
    while pos < len(data):
        end = pos + 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
        out.append(data[pos:end])
        pos = end
    return out


def test_right_code_establishes_a_session_keyed_by_the_code() -> None:
    """The right code gives both sides the same session; data flows; ids are exchanged."""
    v = verifier()
    pair = pake_pair(v)
    pair.roundtrip()
    assert pair.client.state is pair.server.state is ConnectionState.ESTABLISHED
    assert pair.client.via_pake and pair.server.via_pake
    # The server names the verifier that keyed it (a daemon checks it is the open window's).
    assert pair.server.pake_verifier is v and pair.client.pake_verifier is None
    assert pair.client.session_id == pair.server.session_id
    assert pair.client.export_secret("pair key") == pair.server.export_secret("pair key")
    assert (pair.client.peer_id, pair.server.peer_id) == ("home", "phone")
    assert [type(e) for e in pair.server_events] == [HandshakeCompleted]
    pair.client.send_data(b"hello")
    pair.roundtrip()
    assert DataReceived(data=b"hello") in pair.server_events
    assert (v.successes, v.failures, v.closed) == (1, 0, True)  # single use: window closed


def test_wrong_code_fails_at_confirmation_and_counts() -> None:
    """A wrong code: the prover rejects confirmV and hangs up; the verifier counts a failure."""
    v = verifier()
    pair = pake_pair(v, b"00000000")
    pair.roundtrip()
    assert pair.client.state is ConnectionState.CLOSED
    assert isinstance(pair.client.close_exc, HandshakeFailed)
    assert pair.server.state is ConnectionState.SERVER_EXPECT_CONFIRM_P
    pair.server.receive_eof(pair.clock.now)  # the prover's hang-up reaches the verifier
    assert (v.failures, v.successes, v.busy, v.closed) == (1, 0, False, False)


def test_forged_confirm_p_is_refused_silently_and_counts() -> None:
    """An attacker that skips confirmV and sends a guess for confirmP gets silence."""
    v = verifier()
    pair = pake_pair(v, b"00000000")
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    pair.client.receive_data(pair.server.data_to_send(), 0.0)
    pair.server.receive_data(pair.client.data_to_send(), 0.0)  # shareP
    pair.server.data_to_send()
    pair.server.receive_data(bytes((FrameType.PAIR_CONFIRM_P, 0, 0, 32)) + b"\x00" * 32, 0.0)
    assert pair.server.state is ConnectionState.CLOSED
    assert pair.server.data_to_send() == b""
    assert v.failures == 1


def test_window_closes_after_max_failures() -> None:
    """After max_failures wrong codes the verifier refuses even the right code."""
    v = verifier(max_failures=3)
    for _ in range(3):
        pair = pake_pair(v, b"99999999")
        pair.roundtrip()
        pair.server.receive_eof(pair.clock.now)
    assert v.closed and v.failures == 3
    pair = pake_pair(v)
    pair.roundtrip()
    assert pair.server.state is ConnectionState.CLOSED  # silent: the prover just waits
    assert pair.client.state is not ConnectionState.ESTABLISHED
    assert v.successes == 0


def test_window_closes_after_its_timeout() -> None:
    """A verifier past expires_at refuses attempts."""
    v = verifier(expires_at=100.0)
    pair = pake_pair(v)
    pair.clock.now = 100.0
    pair.roundtrip()
    assert pair.server.state is ConnectionState.CLOSED
    assert v.successes == v.failures == 0


def test_one_attempt_at_a_time() -> None:
    """While one attempt is in progress a second prover is turned away, uncounted."""
    v = verifier()
    first = pake_pair(v)
    first.server.receive_data(first.client.data_to_send(), 0.0)  # PAIR_REQ: reserved
    second = pake_pair(v)
    second.roundtrip()
    assert second.server.state is ConnectionState.CLOSED
    assert v.failures == 0
    first.roundtrip()
    assert first.server.state is ConnectionState.ESTABLISHED


def test_request_without_shares_costs_no_attempt() -> None:
    """A prover that leaves after PAIR_REQ spent no guess: nothing is counted."""
    v = verifier()
    pair = pake_pair(v)
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    pair.server.receive_eof(0.0)
    assert (v.failures, v.busy) == (0, False)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: replace(m, suites=(Suite.AES_256_GCM,)),
        lambda m: replace(m, prover_id="mallory"),
        lambda m: replace(m, max_record=4096),
        lambda m: replace(m, nonce=b"\x00" * 32),
    ],
)
def test_altered_pair_req_breaks_the_handshake(tamper: Callable[[PairReq], PairReq]) -> None:
    """A man in the middle who changes or strips PAIR_REQ fields makes confirmation fail."""
    v = verifier()
    pair = pake_pair(v)
    req = PairReq.parse(pair.client.data_to_send()[4:])
    pair.server.receive_data(tamper(req).serialize(), 0.0)
    pair.roundtrip()
    assert pair.client.state is ConnectionState.CLOSED
    assert not any(isinstance(e, HandshakeCompleted) for e in pair.client_events)
    assert isinstance(pair.client.close_exc, HandshakeFailed)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: replace(m, keepalive_ms=1),
        lambda m: replace(m, max_record=4096),
        lambda m: replace(m, salt=b"\x01" * 16),
        lambda m: replace(m, iterations=m.iterations + 1),
    ],
)
def test_altered_pair_resp_breaks_the_handshake(tamper: Callable[[PairResp], PairResp]) -> None:
    """Changing PAIR_RESP in transit makes the prover fail at confirmV."""
    v = verifier()
    pair = pake_pair(v)
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    resp = PairResp.parse(pair.server.data_to_send()[4:])
    pair.client.receive_data(tamper(resp).serialize(), 0.0)
    pair.roundtrip()
    assert pair.client.state is ConnectionState.CLOSED
    assert pair.server.state is not ConnectionState.ESTABLISHED


def test_hostile_iteration_count_is_refused_before_any_work() -> None:
    """A verifier asking for more than MAX_ITERATIONS is refused, cheaply."""
    pair = pake_pair(verifier())
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    resp = PairResp.parse(pair.server.data_to_send()[4:])
    hostile = replace(resp, iterations=MAX_ITERATIONS + 1)
    pair.client.receive_data(hostile.serialize(), 0.0)
    assert pair.client.state is ConnectionState.CLOSED
    assert "PBKDF2" in str(pair.client.close_exc)


def test_invalid_and_identity_shares_are_refused() -> None:
    """PAIR_SHARE_P with the identity, an off-curve point or w0*M is refused silently."""
    from pstp.crypto.spake2plus import M

    v = verifier()
    w0_m = None
    try:
        from ecdsa import NIST256p
        from ecdsa.ellipticcurve import PointJacobi

        pt = PointJacobi.from_bytes(NIST256p.curve, M) * v.w0
        w0_m = b"\x04" + pt.to_bytes()
    except ImportError:  # pragma: no cover - ecdsa is a dependency
        pass
    for share in (b"\x04" + b"\x00" * 64, b"\x04" + b"\x01" * 64, w0_m):
        assert share is not None
        pair = pake_pair(v)
        pair.server.receive_data(pair.client.data_to_send(), 0.0)
        pair.server.data_to_send()
        pair.server.receive_data(bytes((FrameType.PAIR_SHARE_P, 0, 0, 65)) + share, 0.0)
        assert pair.server.state is ConnectionState.CLOSED
        assert pair.server.data_to_send() == b""
    assert v.failures == 3  # each share was an attempt


def test_mode_mismatch_and_no_verifier_fail() -> None:
    """Pairing vs session mode must match; a device with no open window refuses PAIR_REQ."""
    pair = pake_pair(verifier(pairing=False), pairing=True)
    pair.roundtrip()
    assert pair.server.state is ConnectionState.CLOSED
    assert pair.client.state is ConnectionState.CLIENT_EXPECT_PAIR_RESP  # met with silence
    client = Connection(Role.CLIENT, pake=PakeProver(CODE, "phone"))
    server = Connection(Role.SERVER, own_id="home")
    pair = Pair(client, server)
    server.start(0.0)
    client.start(0.0)
    pair.roundtrip()
    assert server.state is ConnectionState.CLOSED and server.data_to_send() == b""


def test_wrong_expected_verifier_id_fails() -> None:
    """A prover that expects another device id refuses the PAIR_RESP."""
    pair = pake_pair(verifier(), responder_id="kettle")
    pair.roundtrip()
    assert pair.client.state is ConnectionState.CLOSED
    assert "another device id" in str(pair.client.close_exc)


def test_prover_cache_reuses_the_stretched_values() -> None:
    """Repeat sessions with the same secret and parameters run PBKDF2 only once."""
    v = verifier(pairing=False, single_use=False, max_failures=None)
    prover = PakeProver(CODE, "phone")
    for _ in range(3):
        client = Connection(Role.CLIENT, pake=prover)
        server = Connection(Role.SERVER, own_id="home", pake=v)
        pair = Pair(client, server)
        server.start(0.0)
        client.start(0.0)
        pair.roundtrip()
        assert client.state is ConnectionState.ESTABLISHED
    assert len(prover._cache) == 1
    assert v.successes == 3


def test_misuse_raises() -> None:
    """Wrong credential types per role and empty codes are refused locally."""
    with pytest.raises(LocalProtocolError):
        Connection(Role.CLIENT, pake=verifier())
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER, own_id="home", pake=PakeProver(CODE, "x"))
    with pytest.raises(ValueError):
        PakeProver(b"", "x")
    with pytest.raises(ValueError):
        PakeVerifier.from_code(b"", "home")


def test_pake_frames_fed_every_way_give_the_same_result() -> None:
    """PAIR_REQ has the same effect whole, byte by byte, and followed by garbage."""
    req = pake_pair(verifier()).client.data_to_send()
    results = feed_all_ways(
        lambda: _started(Connection(Role.SERVER, own_id="home", pake=verifier())), req
    )
    assert results["whole"] == results["bytewise"] == results["garbage"]
    assert results["whole"][1] > 0


def _started(conn: Connection) -> Connection:
    conn.start(0.0)
    return conn


_V = verifier(pairing=False, single_use=False, max_failures=None)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_in_pake_states(data: bytes) -> None:
    """Arbitrary bytes fed to a verifier, before and after PAIR_REQ, never raise."""
    pair = pake_pair(_V, pairing=False)
    pair.server.receive_data(data, 0.0)
    pair = pake_pair(_V, pairing=False)
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    pair.server.receive_data(data, 0.0)
    pair.client.receive_data(data, 0.0)
    pair.server.receive_eof(0.0)


def test_terminated_event_on_failure_is_handshake_failed() -> None:
    """A failed PAKE handshake ends with HANDSHAKE_FAILED on the prover."""
    pair = pake_pair(verifier(), b"11111111")
    pair.roundtrip()
    ev = [e for e in pair.client_events if isinstance(e, ConnectionTerminated)]
    assert ev and ev[0].code == ErrorCode.HANDSHAKE_FAILED


def test_bad_verifiers_fail_at_construction_not_in_receive_data() -> None:
    """Invalid verifier fields, or one for another device id, are refused up front."""
    good = verifier()
    for field, value in (("own_id", "x" * 65), ("salt", b"short"), ("iterations", 10)):
        with pytest.raises(ValueError):
            replace(good, **{field: value})
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER, own_id="other", pake=good)


def test_prover_cache_is_bounded() -> None:
    """A hostile verifier sending fresh salts cannot grow the prover's cache without bound."""
    prover = PakeProver(CODE, "phone")
    for i in range(20):
        prover.stretch(bytes([i]) * 16, 100_000, "home")
    assert len(prover._cache) <= 8


# -- Passphrase and PairHello ------------------------------------------------------


@given(st.text(min_size=1, max_size=40))
def test_passphrase_from_text_is_its_utf8(text: str) -> None:
    """A str passphrase is its UTF-8 encoding; bytes are kept as given."""
    assert Passphrase(text) == text.encode("utf-8")
    assert Passphrase(text.encode("utf-8")) == text.encode("utf-8")
    assert isinstance(Passphrase(text), bytes)


@pytest.mark.parametrize("value", ["", b""])
def test_passphrase_must_not_be_empty(value: str | bytes) -> None:
    """An empty passphrase, as str or bytes, is refused."""
    with pytest.raises(ValueError):
        Passphrase(value)


def test_passphrase_never_shows_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    """repr, str, formatting and logging a Passphrase show a placeholder, never the secret."""
    secret = Passphrase("correct horse")
    caplog.set_level(logging.DEBUG, logger="pstp.test.passphrase")
    logging.getLogger("pstp.test.passphrase").debug("secret %s %r", secret, secret)
    shown = [repr(secret), str(secret), f"{secret}", format(secret), str([secret])]
    shown += [r.getMessage() for r in caplog.records]
    for text in shown:
        assert "Passphrase(<secret>)" in text
        assert "horse" not in text


def test_prover_repr_hides_the_code() -> None:
    """A PakeProver's repr names its id and mode, not its code."""
    text = repr(PakeProver(CODE, "phone", pairing=True))
    assert text == "<PakeProver 'phone' pairing=True>"
    assert CODE.decode() not in text


@given(st.text(min_size=1, max_size=64), st.none() | st.integers(0, 65535))
def test_pair_hello_round_trips_through_msgpack(device_id: str, port: int | None) -> None:
    """decode(encode(hello)) == hello for what each side says on the pair channel."""
    hello = PairHello(device_id, port)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(hello), type=PairHello) == hello


def test_pair_hello_port_is_optional_and_extra_fields_are_refused() -> None:
    """A hello without a port decodes with port None; one with extra fields is refused."""
    hello = msgspec.msgpack.decode(msgspec.msgpack.encode(["home"]), type=PairHello)
    assert hello == PairHello("home") and hello.port is None
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode(["home", 22, "x"]), type=PairHello)
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode([22]), type=PairHello)


# -- the two halves, driven directly (as a hostile peer would) ---------------------

#: A session-mode verifier for refusals that never reserve it.
_REFUSER = verifier(pairing=False, single_use=False, max_failures=None)
_RESP = PairResp(VERSION, "home", b"s" * 16, 100_000, Suite.AES_256_GCM, 65536, 0)


def _initiator(config: Config | None = None, *, pairing: bool = False) -> PakeInitiator:
    """A prover's half aimed at "home"."""
    return PakeInitiator(
        PakeProver(CODE, "phone", pairing=pairing), config or Config(), verifier_id="home"
    )


def _responder(
    v: PakeVerifier, config: Config | None = None, *, keepalive_ms: int = 0
) -> PakeResponder:
    """A verifier's half."""
    return PakeResponder(v, config or Config(), keepalive_ms=keepalive_ms)


def _run_halves(ini: PakeInitiator, resp: PakeResponder) -> tuple[SessionKeys, SessionKeys]:
    """Run all five frames through both halves; return (prover keys, verifier keys)."""
    share_p = ini.read_response(resp.read_request(ini.request_frame[4:], 0.0)[4:])
    confirm_p, keys_p = ini.read_share_v(resp.read_share_p(share_p[4:])[4:])
    return keys_p, resp.read_confirm_p(confirm_p[4:])


def test_halves_derive_the_same_keys_and_carry_the_negotiated_limits() -> None:
    """Both halves agree on keys; each learns the other's record limit and the keepalive."""
    v = verifier()
    ini = _initiator(Config(max_record_size=2048), pairing=True)
    resp = _responder(v, Config(max_record_size=4096), keepalive_ms=2500)
    keys_p, keys_v = _run_halves(ini, resp)
    for name in ("suite", "i2r_key", "r2i_key", "session_id", "exporter_secret", "keepalive_ms"):
        assert getattr(keys_p, name) == getattr(keys_v, name), name
    assert keys_p.i2r_key != keys_p.r2i_key
    assert (keys_p.peer_max_record, keys_v.peer_max_record) == (4096, 2048)
    assert keys_p.keepalive_ms == 2500
    assert keys_p.responder_id == keys_v.responder_id == "home"
    assert keys_p.suite == Suite.AES_256_GCM
    resp.release(success=True)
    resp.release(success=True)  # exactly once: the second call does nothing
    assert (v.successes, v.failures, v.busy) == (1, 0, False)


@given(st.integers(0, 255).filter(lambda n: n != VERSION))
def test_initiator_refuses_a_pair_resp_with_another_version(version: int) -> None:
    """A PAIR_RESP in another version than the PAIR_REQ fails before any PBKDF2."""
    with pytest.raises(HandshakeFailed, match="another version"):
        _initiator().read_response(replace(_RESP, version=version).serialize()[4:])


@given(st.integers(0, 0xFFFF).filter(lambda n: n != Suite.AES_256_GCM))
def test_initiator_refuses_a_suite_it_did_not_offer(suite: int) -> None:
    """A verifier choosing a suite outside the PAIR_REQ's list is refused."""
    ini = _initiator(Config(suites=(Suite.AES_256_GCM,)))
    with pytest.raises(HandshakeFailed, match="did not offer"):
        ini.read_response(replace(_RESP, suite=suite).serialize()[4:])


@given(st.integers(0, 1023))
def test_initiator_refuses_a_record_limit_below_1024(max_record: int) -> None:
    """A verifier announcing a record limit under 1024 bytes is refused."""
    with pytest.raises(HandshakeFailed, match="did not offer"):
        _initiator().read_response(replace(_RESP, max_record=max_record).serialize()[4:])


def test_initiator_accepts_a_record_limit_of_1024() -> None:
    """1024 bytes is the smallest record limit a verifier may announce."""
    v = verifier(pairing=False)
    ini = _initiator()
    resp = _responder(v, Config(max_record_size=1024))
    keys_p, _ = _run_halves(ini, resp)
    assert keys_p.peer_max_record == 1024


def test_initiator_refuses_a_malformed_pair_resp() -> None:
    """A truncated or padded PAIR_RESP is a protocol error, not a crash."""
    body = _RESP.serialize()[4:]
    for bad in (b"", body[:-1], body + b"\x00"):
        with pytest.raises(RemoteProtocolError):
            _initiator().read_response(bad)


_HIGHER = Config(versions=(VERSION, VERSION + 1))


@pytest.mark.parametrize(
    ("prover_config", "verifier_config", "tamper", "reason"),
    [
        (None, None, lambda m: replace(m, version=VERSION + 1), "unsupported version"),
        (None, None, lambda m: replace(m, version=0), "unsupported version"),
        (_HIGHER, _HIGHER, lambda m: replace(m, version=VERSION), "downgrade"),
        (None, _HIGHER, lambda m: replace(m, versions=(VERSION + 1,)), "downgrade"),
        (None, None, lambda m: replace(m, versions=(VERSION - 1,)), "downgrade"),
        (None, None, lambda m: replace(m, flags=1), "pairing mode"),
        (None, None, lambda m: replace(m, suites=(0x0003, 0xFFFF)), "no common suite"),
        (None, None, lambda m: replace(m, max_record=1023), "no common suite"),
        (None, None, lambda m: replace(m, max_record=0), "no common suite"),
    ],
    ids=[
        "newer-version",
        "version-0",
        "downgraded-header",
        "header-version-not-listed",
        "no-common-version",
        "mode",
        "no-common-suite",
        "record-1023",
        "record-0",
    ],
)
def test_responder_refuses_a_pair_req_without_spending_an_attempt(
    prover_config: Config | None,
    verifier_config: Config | None,
    tamper: Callable[[PairReq], PairReq],
    reason: str,
) -> None:
    """Unsupported versions, downgrades, mode or suite mismatches are refused, uncounted."""
    req = tamper(_initiator(prover_config).request)
    resp = _responder(_REFUSER, verifier_config)
    with pytest.raises(HandshakeFailed, match=reason):
        resp.read_request(req.serialize()[4:], 0.0)
    assert not resp.active and not _REFUSER.busy and _REFUSER.failures == 0
    with pytest.raises(LocalProtocolError):  # a refused request leaves nothing to continue
        resp.read_share_p(b"\x04" * 65)


def test_responder_accepts_the_smallest_record_limit_and_the_highest_common_version() -> None:
    """A PAIR_REQ with max_record 1024, in the highest version both speak, is answered."""
    v = verifier(pairing=False)
    ini = _initiator(Config(versions=(VERSION, VERSION + 1), max_record_size=1024))
    resp = _responder(v, Config(versions=(VERSION, VERSION + 1)))
    keys_p, keys_v = _run_halves(ini, resp)
    assert ini.request.version == VERSION + 1
    assert keys_v.peer_max_record == 1024 and keys_p.session_id == keys_v.session_id


@pytest.mark.parametrize("length", [0, 33, 64, 66, 97])
def test_responder_refuses_a_share_p_of_the_wrong_length(length: int) -> None:
    """A PAIR_SHARE_P that is not one 65-byte point is refused and is not counted as a guess."""
    v = verifier(pairing=False)
    ini = _initiator()
    resp = _responder(v)
    resp.read_request(ini.request_frame[4:], 0.0)
    with pytest.raises(HandshakeFailed, match="PAIR_SHARE_P length"):
        resp.read_share_p(b"\x04" * length)
    assert not resp.guessed
    resp.release(success=False)
    assert (v.failures, v.busy) == (0, False)


@pytest.mark.parametrize("length", [0, 32, 65, 96, 98])
def test_initiator_refuses_a_share_v_of_the_wrong_length(length: int) -> None:
    """A PAIR_SHARE_V that is not a 65-byte point and a 32-byte confirmV is refused."""
    v = verifier(pairing=False)
    ini = _initiator()
    resp = _responder(v)
    share_p = ini.read_response(resp.read_request(ini.request_frame[4:], 0.0)[4:])
    good = resp.read_share_p(share_p[4:])[4:]
    assert len(good) == 97
    with pytest.raises(HandshakeFailed, match="PAIR_SHARE_V length"):
        ini.read_share_v((good * 2)[:length])


def test_halves_called_out_of_order_raise_local_protocol_error() -> None:
    """Each step before the one it follows is a local error, not a handshake failure."""
    with pytest.raises(LocalProtocolError):
        _initiator().read_share_v(b"\x04" * 97)
    resp = _responder(_REFUSER)
    with pytest.raises(LocalProtocolError):
        resp.read_share_p(b"\x04" * 65)
    with pytest.raises(LocalProtocolError):
        resp.read_confirm_p(b"\x00" * 32)
    v = verifier(pairing=False)
    resp = _responder(v)
    resp.read_request(_initiator().request_frame[4:], 0.0)
    with pytest.raises(LocalProtocolError):  # confirmP before shareP
        resp.read_confirm_p(b"\x00" * 32)
    resp.release(success=False)
    assert (v.failures, v.busy) == (0, False)


@pytest.mark.parametrize(
    ("offered", "tamper", "reason"),
    [
        ((Suite.AES_256_GCM,), lambda m: replace(m, suite=Suite.CHACHA20_POLY1305), "offer"),
        (None, lambda m: replace(m, max_record=1023), "offer"),
        (None, lambda m: replace(m, version=VERSION + 1), "version"),
    ],
    ids=["suite-not-offered", "record-1023", "version"],
)
def test_hostile_pair_resp_closes_the_prover(
    offered: tuple[Suite, ...] | None, tamper: Callable[[PairResp], PairResp], reason: str
) -> None:
    """Through a Connection, a PAIR_RESP the prover cannot accept ends it with HANDSHAKE_FAILED."""
    pair = pake_pair(verifier(), config=Config(suites=offered) if offered else None)
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    resp = PairResp.parse(pair.server.data_to_send()[4:])
    pair.client.receive_data(tamper(resp).serialize(), 0.0)
    assert pair.client.state is ConnectionState.CLOSED
    assert isinstance(pair.client.close_exc, HandshakeFailed)
    assert reason in str(pair.client.close_exc)
    assert pair.client.close_code == ErrorCode.HANDSHAKE_FAILED
    assert pair.client.data_to_send() == b""


def test_a_verifier_never_prints_w0_or_l() -> None:
    """repr() of a verifier names the device and its counters, not (w0, L)."""
    v = verifier()
    shown = repr(v)
    assert "PakeVerifier(own_id=" in shown and "failures=0" in shown
    assert str(v.w0) not in shown and v.L.hex() not in shown and repr(v.L) not in shown


def test_pake_verifier_is_named_only_once_it_keyed_the_session() -> None:
    """Before PSTP-PAKE completes (or on a PSTP-HS session) no verifier is named."""
    server = Connection(Role.SERVER, own_id="home", pake=verifier())
    assert server.pake_verifier is None
