"""PSTP-PAKE: a session keyed by a human code or passphrase, via SPAKE2+ (docs/protocol.md §15).

::

    PAIR_REQ        P -> V   versions, prover id, nonce, suites, max_record, service
    PAIR_RESP       V -> P   verifier id, salt, iterations, suite, max_record, keepalive
    PAIR_SHARE_P    P -> V   shareP
    PAIR_SHARE_V    V -> P   shareV, confirmV
    PAIR_CONFIRM_P  P -> V   confirmP

The SPAKE2+ Context is SHA-256 over a label and the PAIR_REQ and PAIR_RESP
frames, so nothing in them can be changed or stripped.  The verifier keeps
only (w0, L); a guess costs an attacker one online attempt, and attempts are
counted (a pairing window closes after 20 failures).  The record keys come
from K_shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from pstp.crypto.kdf import digest, hkdf_sha256, random_bytes
from pstp.exceptions import HandshakeFailed, LocalProtocolError
from pstp.protocol.config import Config
from pstp.protocol.handshake import SessionKeys
from pstp.wire.frames import (
    PAIR_FLAG_PAIRING,
    PAIR_NONCE_LEN,
    FrameType,
    PairReq,
    PairResp,
    frame_header,
)

if TYPE_CHECKING:
    from pstp.crypto.spake2plus import Prover, Verifier

__all__ = [
    "MAX_ITERATIONS",
    "PAIR_CHANNEL",
    "PAIR_KEY_LABEL",
    "PairHello",
    "PakeInitiator",
    "PakeProver",
    "PakeResponder",
    "PakeVerifier",
    "Passphrase",
]

#: Fewest PBKDF2 iterations (§15.4); equal to pstp.crypto.spake2plus.MIN_ITERATIONS.
MIN_ITERATIONS = 100_000
#: Most PBKDF2 iterations a prover accepts from a verifier (§15.3): a hostile
#: verifier must not make the prover burn minutes of CPU.
MAX_ITERATIONS = 2_000_000
#: The channel kind both sides use to exchange ids after a pairing PAKE (§16).
PAIR_CHANNEL = "pair"
#: Exporter label of the pair key (§16): both sides derive the same 32 bytes.
PAIR_KEY_LABEL = "pair key"
_LABEL_CONTEXT = b"PSTP/2 PAKE context"
_LABEL_SESSION = b"PSTP/2 PAKE session"
_LABEL_I2R = b"PSTP/2 PAKE i2r"
_LABEL_R2I = b"PSTP/2 PAKE r2i"
_LABEL_EXPORTER = b"PSTP/2 PAKE exporter"
_SHARE_LEN = 65
_CACHE_SIZE = 8
_CONFIRM_LEN = 32


class PairHello(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """What each side says on the pair channel (§16): its id and service port."""

    device_id: str
    port: int | None = None


class Passphrase(bytes):
    """A human secret (code or passphrase), marked as such: APIs given one run PSTP-PAKE.

    It is never used as a key: it only enters SPAKE2+ after PBKDF2 (§15.4).

    Raises:
        ValueError: empty.
    """

    def __new__(cls, value: bytes | str) -> Passphrase:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if not raw:
            raise ValueError("empty passphrase")
        return super().__new__(cls, raw)

    def __repr__(self) -> str:
        return "Passphrase(<secret>)"

    # bytes.__str__ does not call __repr__: without this, str(), f"{secret}" and
    # logging's %s would print the passphrase.
    __str__ = __repr__


def _context(req_frame: bytes, resp_frame: bytes) -> bytes:
    return digest("SHA256", _LABEL_CONTEXT + req_frame + resp_frame)


def _session_keys(
    shared: bytes,
    context: bytes,
    share_p: bytes,
    share_v: bytes,
    *,
    suite: int,
    peer_max_record: int,
    keepalive_ms: int,
    responder_id: str,
) -> SessionKeys:
    def key(label: bytes) -> bytes:
        return hkdf_sha256(shared, salt=None, info=label, length=32)

    return SessionKeys(
        suite=suite,
        i2r_key=key(_LABEL_I2R),
        r2i_key=key(_LABEL_R2I),
        session_id=digest("SHA256", _LABEL_SESSION + context + share_p + share_v),
        exporter_secret=key(_LABEL_EXPORTER),
        peer_max_record=peer_max_record,
        keepalive_ms=keepalive_ms,
        responder_id=responder_id,
    )


class PakeVerifier(msgspec.Struct):
    """The serving side's credential: (w0, L) for one code, and its attempt budget.

    Shared by every connection of a server, like a key ring.  For a pairing
    window it allows one attempt at a time, at most ``max_failures`` failed
    attempts, and nothing after ``expires_at``; a success closes it when
    ``single_use`` is set.

    Attributes:
        own_id: the verifier's device id (bound into w0/w1 and the transcript).
        salt: PBKDF2 salt, 16-32 random bytes.
        iterations: PBKDF2 iterations (≥ 100 000).
        pairing: true for a pairing window (the result is a pair key).
        max_failures: failed attempts after which the verifier closes (None: never).
        expires_at: time (same clock as ``now``) after which it refuses attempts.
        single_use: close after the first success.
    """

    own_id: str
    w0: int
    L: bytes
    salt: bytes
    iterations: int
    pairing: bool = True
    max_failures: int | None = 20
    expires_at: float | None = None
    single_use: bool = True
    failures: int = 0
    successes: int = 0
    busy: bool = False
    closed: bool = False

    def __repr__(self) -> str:  # never w0 or L
        return (
            f"PakeVerifier(own_id={self.own_id!r}, pairing={self.pairing}, "
            f"failures={self.failures}, successes={self.successes}, closed={self.closed})"
        )

    def __post_init__(self) -> None:
        # Checked here, not when a prover arrives: a bad verifier must fail at
        # construction, never inside Connection.receive_data (§15.6).
        if not 0 < len(self.own_id.encode("utf-8")) <= 64:
            raise ValueError("a device id is 1 to 64 bytes of UTF-8")
        if not 16 <= len(self.salt) <= 32:
            raise ValueError("the salt is 16 to 32 bytes")
        if not MIN_ITERATIONS <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"iterations must be in [{MIN_ITERATIONS}, {MAX_ITERATIONS}]")

    @classmethod
    def from_code(
        cls,
        code: bytes,
        own_id: str,
        *,
        iterations: int = MIN_ITERATIONS,
        pairing: bool = True,
        max_failures: int | None = 20,
        expires_at: float | None = None,
        single_use: bool = True,
    ) -> PakeVerifier:
        """Stretch ``code`` once and keep only (w0, L); the code itself is not stored.

        Raises:
            ValueError: too few iterations, or an empty code.
        """
        if not code:
            raise ValueError("empty code")
        salt = random_bytes(16)
        # SPAKE2+ (and python-ecdsa) load only when a code is actually used:
        # a PSTP-HS session never pays for them (start-up time, §10).
        from pstp.crypto.spake2plus import compute_L, derive_w0_w1

        w0, w1 = derive_w0_w1(
            code, salt=salt, iterations=iterations, id_prover=b"", id_verifier=own_id.encode()
        )
        return cls(
            own_id,
            w0,
            compute_L(w1),
            salt,
            iterations,
            pairing=pairing,
            max_failures=max_failures,
            expires_at=expires_at,
            single_use=single_use,
        )

    def usable(self, now: float) -> bool:
        """True if an attempt may start now."""
        expired = self.expires_at is not None and now >= self.expires_at
        return not (self.closed or self.busy or expired)

    def begin(self, now: float) -> bool:
        """Reserve the verifier for one attempt (False: refuse this connection)."""
        if not self.usable(now):
            return False
        self.busy = True
        return True

    def end(self, *, guessed: bool, success: bool) -> None:
        """Release it; ``guessed``: the prover sent a share, so an online guess was spent."""
        self.busy = False
        if success:
            self.successes += 1
            if self.single_use:
                self.closed = True
        elif guessed:
            self.failures += 1
            if self.max_failures is not None and self.failures >= self.max_failures:
                self.closed = True


class PakeProver:
    """The connecting side's credential: the code, and stretched values already computed.

    The cache keeps repeat sessions with the same secret fast: PBKDF2 runs
    once per (salt, iterations, verifier id).

    Args:
        code: the code or passphrase, as bytes (normalise it before).
        own_id: the prover's device id.
        pairing: ask for pairing (a pair key results) rather than a one-off session.
    """

    def __init__(self, code: bytes, own_id: str, *, pairing: bool = False) -> None:
        if not code:
            raise ValueError("empty code")
        self._code = code
        self.own_id = own_id
        self.pairing = pairing
        self._cache: dict[tuple[bytes, int, str], tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"<PakeProver {self.own_id!r} pairing={self.pairing}>"

    def stretch(self, salt: bytes, iterations: int, verifier_id: str) -> tuple[int, int]:
        """(w0, w1) for this code under the verifier's parameters.

        Raises:
            HandshakeFailed: parameters outside what we accept (§15.3).
        """
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS or not 16 <= len(salt) <= 32:
            raise HandshakeFailed("verifier asked for unacceptable PBKDF2 parameters")
        key = (salt, iterations, verifier_id)
        if key not in self._cache and len(self._cache) >= _CACHE_SIZE:
            # Bounded: a hostile verifier sending fresh salts cannot grow it.
            self._cache.pop(next(iter(self._cache)))
        if key not in self._cache:
            from pstp.crypto.spake2plus import derive_w0_w1

            self._cache[key] = derive_w0_w1(
                self._code,
                salt=salt,
                iterations=iterations,
                id_prover=b"",
                id_verifier=verifier_id.encode(),
            )
        return self._cache[key]


class PakeInitiator:
    """The prover's half of PSTP-PAKE.

    Args:
        prover: the credential.
        config: versions, suites and limits.
        verifier_id: the device we expect, if known (checked against PAIR_RESP).
        nonce: fixed PAIR_REQ nonce (test vectors only).
        x: fixed SPAKE2+ scalar (test vectors only).
    """

    def __init__(
        self,
        prover: PakeProver,
        config: Config,
        *,
        verifier_id: str | None,
        nonce: bytes | None = None,
        x: int | None = None,
    ) -> None:
        self._prover = prover
        self._x = x
        self._config = config
        self._verifier_id = verifier_id
        self.request = PairReq(
            version=max(config.versions),
            flags=PAIR_FLAG_PAIRING if prover.pairing else 0,
            versions=tuple(config.versions),
            prover_id=prover.own_id or "anonymous",
            nonce=nonce if nonce is not None else random_bytes(PAIR_NONCE_LEN),
            suites=tuple(int(s) for s in config.suites),
            max_record=config.max_record_size,
            service=config.service,
        )
        self.request_frame = self.request.serialize()
        self._resp: PairResp | None = None
        self._resp_frame = b""
        self._spake: Prover | None = None
        self._share_p = b""

    def read_response(self, body: bytes) -> bytes:
        """Process PAIR_RESP; returns the PAIR_SHARE_P frame.

        Raises:
            HandshakeFailed: wrong version or verifier, a suite we did not offer,
                unacceptable PBKDF2 parameters.
            RemoteProtocolError: malformed.
        """
        resp = PairResp.parse(body)
        if resp.version != self.request.version:
            raise HandshakeFailed("verifier answered with another version")
        if self._verifier_id is not None and resp.verifier_id != self._verifier_id:
            raise HandshakeFailed("verifier stated another device id")
        if resp.suite not in self.request.suites or resp.max_record < 1024:
            raise HandshakeFailed("verifier chose parameters we did not offer")
        w0, w1 = self._prover.stretch(resp.salt, resp.iterations, resp.verifier_id)
        self._resp, self._resp_frame = resp, frame_header(FrameType.PAIR_RESP, len(body)) + body
        from pstp.crypto.spake2plus import Prover

        self._spake = Prover(
            _context(self.request_frame, self._resp_frame),
            self.request.prover_id.encode(),
            resp.verifier_id.encode(),
            w0,
            w1,
            x=self._x,
        )
        self._share_p = self._spake.share()
        return frame_header(FrameType.PAIR_SHARE_P, _SHARE_LEN) + self._share_p

    def read_share_v(self, body: bytes) -> tuple[bytes, SessionKeys]:
        """Process PAIR_SHARE_V; returns the PAIR_CONFIRM_P frame and the session keys.

        Raises:
            HandshakeFailed: bad length, bad point, or confirmV does not verify
                (the code was wrong).
            LocalProtocolError: called out of order.
        """
        if self._spake is None or self._resp is None:
            raise LocalProtocolError("PAIR_SHARE_V before PAIR_RESP")
        if len(body) != _SHARE_LEN + _CONFIRM_LEN:
            raise HandshakeFailed("bad PAIR_SHARE_V length")
        share_v = body[:_SHARE_LEN]
        confirm_p = self._spake.finish(share_v, body[_SHARE_LEN:])
        keys = _session_keys(
            self._spake.K_shared,
            _context(self.request_frame, self._resp_frame),
            self._share_p,
            share_v,
            suite=self._resp.suite,
            peer_max_record=self._resp.max_record,
            keepalive_ms=self._resp.keepalive_ms,
            responder_id=self._resp.verifier_id,
        )
        return frame_header(FrameType.PAIR_CONFIRM_P, _CONFIRM_LEN) + confirm_p, keys


class PakeResponder:
    """The verifier's half of PSTP-PAKE.

    Args:
        verifier: the shared credential and attempt budget.
        config: versions, suites and limits.
        keepalive_ms: the heartbeat interval we suggest.
        y: fixed SPAKE2+ scalar (test vectors only).
    """

    def __init__(
        self,
        verifier: PakeVerifier,
        config: Config,
        *,
        keepalive_ms: int = 0,
        y: int | None = None,
    ) -> None:
        self._verifier = verifier
        self._y = y
        self._config = config
        self._keepalive_ms = keepalive_ms
        self.request: PairReq | None = None
        self._context = b""
        self._spake: Verifier | None = None
        self._share_p = self._share_v = b""
        self._resp: PairResp | None = None
        #: An attempt is reserved on the verifier and must be released.
        self.active = False
        #: The prover sent its share: an online guess was spent.
        self.guessed = False

    def read_request(self, body: bytes, now: float) -> bytes:
        """Process PAIR_REQ; returns the PAIR_RESP frame.

        Raises:
            HandshakeFailed: the verifier is closed, expired or busy; version,
                mode or suite mismatch; a version downgrade.
            RemoteProtocolError: malformed.
        """
        req = PairReq.parse(body)
        cfg = self._config
        if req.version not in cfg.versions:
            raise HandshakeFailed("unsupported version")
        common = set(req.versions) & set(cfg.versions)
        if not common or max(common) != req.version:
            raise HandshakeFailed("version downgrade detected")
        if bool(req.flags & PAIR_FLAG_PAIRING) != self._verifier.pairing:
            raise HandshakeFailed("pairing mode mismatch")
        suite = next((int(s) for s in cfg.suites if s in req.suites), None)
        if suite is None or req.max_record < 1024:
            raise HandshakeFailed("no common suite")
        if not self._verifier.begin(now):
            raise HandshakeFailed("no pairing attempt possible now")
        self.active = True
        v = self._verifier
        self._resp = PairResp(
            req.version,
            v.own_id,
            v.salt,
            v.iterations,
            suite,
            cfg.max_record_size,
            self._keepalive_ms,
        )
        resp_frame = self._resp.serialize()
        req_frame = frame_header(FrameType.PAIR_REQ, len(body)) + body
        self._context = _context(req_frame, resp_frame)
        from pstp.crypto.spake2plus import Verifier

        self._spake = Verifier(
            self._context, req.prover_id.encode(), v.own_id.encode(), v.w0, v.L, y=self._y
        )
        self.request = req
        return resp_frame

    def read_share_p(self, body: bytes) -> bytes:
        """Process PAIR_SHARE_P; returns the PAIR_SHARE_V frame (shareV and confirmV).

        Raises:
            HandshakeFailed: bad length or point.
            LocalProtocolError: called out of order.
        """
        if self._spake is None:
            raise LocalProtocolError("PAIR_SHARE_P before PAIR_REQ")
        if len(body) != _SHARE_LEN:
            raise HandshakeFailed("bad PAIR_SHARE_P length")
        self.guessed = True
        share_v, confirm_v = self._spake.respond(body)
        self._share_p, self._share_v = body, share_v
        body_v = share_v + confirm_v
        return frame_header(FrameType.PAIR_SHARE_V, len(body_v)) + body_v

    def read_confirm_p(self, body: bytes) -> SessionKeys:
        """Verify confirmP; returns the session keys.

        Raises:
            HandshakeFailed: confirmP does not verify (the code was wrong).
            LocalProtocolError: called out of order.
        """
        if self._spake is None or self._resp is None or self.request is None:
            raise LocalProtocolError("PAIR_CONFIRM_P before PAIR_SHARE_P")
        self._spake.finish(body)
        return _session_keys(
            self._spake.K_shared,
            self._context,
            self._share_p,
            self._share_v,
            suite=self._resp.suite,
            peer_max_record=self.request.max_record,
            keepalive_ms=self._keepalive_ms,
            responder_id=self._verifier.own_id,
        )

    def release(self, *, success: bool) -> None:
        """End the attempt on the shared verifier (exactly once)."""
        if self.active:
            self.active = False
            self._verifier.end(guessed=self.guessed, success=success)
