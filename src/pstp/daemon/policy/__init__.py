"""Policy: what each trusted peer may do.  Deny by default, and explain every decision.

A peer may do nothing unless its ``[peers.NAME.policy]`` table says so.  Every
answer is a :class:`Decision` naming the rule that decided (a dotted config
key, or ``default deny``) and a reason a person can read.

Configuration (in ``pstp.toml``; validated when loaded, every error names the
key and, where it can be found, the line; unknown keys are errors)::

    [actions."kettle.on"]        # quote dotted names: [actions.kettle.on] is a nested table
    argv = ["/usr/local/bin/kettle", "on", "{temp}"]   # run by the action runner
    args = { temp = { type = "int", min = 40, max = 100, default = 100 } }

    [peers.phone.policy]
    actions = ["kettle.*", "lights.on"]
    exec = [["uptime"], ["systemctl", "status", "*"], ["ls", "-l", "/srv/**"]]
    shell = false
    when = [ { days = ["mon", "tue", "wed", "thu", "fri"], from = "07:00", to = "22:30" },
             { days = ["sat", "sun"], from = "09:00", to = "23:59" } ]
    expires = 2027-01-01T00:00:00Z
    require_reason = true
    rate = "30/min"
    max_sessions = 2
    files = [ { root = "/srv/share", write = false } ]
    forward = ["127.0.0.1:554", "camera.local:80"]

``[actions.NAME]`` (NAME: 1-64 letters, digits, ``.``, ``_``, ``-``):
    ``args`` is a table of argument schemas.  ``type`` is required: ``"int"``
    and ``"float"`` take ``min`` and ``max``; ``"bool"`` takes nothing else;
    ``"str"`` takes ``max_len`` (default 1024), ``pattern`` (a regular
    expression the whole value must match), ``choices`` (a list of
    strings) and ``allow_dash`` (default ``false``, see below).  An
    argument with a ``default`` is optional, every other one is
    required, and arguments that are not declared are refused.  Values may
    arrive as strings (as the CLI passes them) and are coerced: integers in
    decimal, floats as Python reads them (finite only), booleans as
    true/false/yes/no/on/off/1/0.  ``argv`` is checked only so far as that
    its ``{placeholders}`` name declared arguments; the action runner owns it
    and every other key of the table.

    **Options.**  A peer's string value that would begin an ``argv`` element
    (the placeholder fills the element, as in ``"{file}"``, or starts it, as
    in ``"{file}.txt"``) and starts with ``-`` is refused, since the program
    would read it as an option (``sort -o/etc/x`` writes a file): ``argument
    "file" starts with "-" and would be read as an option``.  Set
    ``allow_dash = true`` in the argument's schema to let such values through
    (then restrict them with ``choices`` or ``pattern``).  Placeholders
    directly after one another (``"{a}{b}"``) are judged in turn while the
    values before are empty.  A value inside an element (``"--file={file}"``),
    numbers, booleans and the owner's ``default`` are not judged.  Where the
    program takes it, a literal ``"--"`` before the placeholders is the other
    guard.
``actions``
    fnmatch globs (case-sensitive) over declared action names.  A name
    without a glob character must name a declared action (typos fail at load).
``exec``
    The argv allow-list.  An entry matches an argv of the same length element
    by element with fnmatch; ``"**"`` as the last element matches any number
    (zero included) of remaining arguments.  The command (element 0) is
    compared literally and may not hold glob characters (``uptime`` and
    ``/usr/bin/uptime`` are different commands; resolving them is exec's job).  Two guards close
    the usual holes of globbing argv: an argument matched only by a wildcard
    (``*``, ``?``, ``[...]`` or ``**``) may not start with ``-`` unless the
    pattern does (no smuggled options such as ``find -exec``), and may not
    hold a ``..`` path component (``/srv/*`` never reaches ``/srv/../etc``).
    There is no shell: metacharacters are plain data, matched literally.

    **Path patterns are resolved.**  An element that is an absolute path
    holding a glob character (``"/srv/share/*"``, ``"/var/log/*.log"``) is a
    *path pattern*; its *fixed directory* is the part before the first glob
    character, up to its last ``/`` (``/srv/share``, ``/var/log``).  An
    argument that matched one lexically is then resolved on the device with
    ``os.path.realpath`` (symbolic links followed, also in the middle of the
    path and dangling ones, ``.`` and ``..`` removed) and allowed only if the
    result lies under the fixed directory (itself resolved) and, spelled under
    that directory, still matches the pattern: with ``[["cat",
    "/srv/share/*"]]``, ``/srv/share/link`` pointing at ``/etc/shadow`` is
    refused by that entry (``argument 1 leaves "/srv/share/*" once symbolic
    links are resolved: "/srv/share/link"``; the refusal does not say where
    the link leads).  The command
    then runs with the *resolved* path in place of the argument, so what was
    checked is what runs; the audit log keeps the argv as requested.  Other
    elements stay lexical: literal elements (the owner named that exact
    path), relative patterns, patterns that do not start with ``/`` (such as
    ``"--file=/srv/*"``) and whatever a final ``"**"`` matches are never
    resolved, so do not rely on them to confine paths.  Limits: the check
    happens when the channel opens (time of check), the program opens the
    path later (time of use); whoever can write under the fixed directory
    can swap a directory on the resolved path for a symbolic link in
    between, and the program follows it.  A path pattern confines only as
    well as the directory's writers can be trusted.  The resolution reads
    this machine's file system, so ``pstp policy check`` gives the device's
    answer only when run on the device.
``shell``
    ``true`` allows an interactive shell (default ``false``).
``when``
    Time windows, any of which must hold; omit ``when`` for "any time" (an
    empty list is an error rather than "never").
    ``days`` (``mon`` ... ``sun``, default all) lists the days a window
    *starts* on; ``from`` and ``to`` are ``"HH:MM"`` (or TOML local times)
    with minute resolution, both inclusive: ``to = "22:30"`` still allows
    22:30:59.  Defaults are ``"00:00"`` and ``"23:59"``.  ``to`` before
    ``from`` means overnight: ``{ days = ["fri"], from = "22:00", to =
    "06:00" }`` holds from Friday 22:00 to Saturday 06:00.  Times are the
    device's local time (``TZ``): an aware ``at`` is converted to it, a naive
    one is taken as local.
``expires``
    A TOML datetime (offset-aware, or local if naive), a date (local
    midnight), or an ISO 8601 string; from that instant on, everything is
    denied.
``require_reason``
    ``true``: every request except opening a session must carry a
    non-empty reason ("why").  Reasons are at most 200 characters on one
    line whether required or not.
``rate``
    ``"N/sec"``, ``"N/min"`` or ``"N/hour"`` (also ``s``, ``second``, ``m``,
    ``minute``, ``h``): a token bucket holding N, refilled at N per period.
    Every request :meth:`Policy.admit` judges spends a token, allowed or
    refused (sessions included), so a peer whose requests are all refused
    is held to its rate too; with the bucket empty the request is refused
    as rate-limited (``rate limit N/period exceeded``).  Default: no limit.
``max_sessions``
    Concurrent sessions for the peer (0 or more; default no limit).
``files``
    ``{ root = "/abs/path", write = false }`` tables.  A path is judged by
    the most specific root that holds it.  Only lexical checks happen here
    (absolute, no ``..``); symlinks are the file transfer's job.
``forward``
    ``"host:port"`` targets (``"[v6]:port"`` for IPv6), compared literally
    (host names case-insensitively, IP addresses by value).

Checks run in this order, the first that fails deciding: unknown peer; no
policy table; expired; outside the time windows; reason missing or malformed;
the request kind's own rules.  :meth:`Policy.admit` then spends a rate token
for every request, allowed or refused, and refuses it as rate-limited,
whatever the checks said, when the peer's bucket is empty; :meth:`Policy.check`
spends nothing.

A :class:`Policy` keeps rate buckets and session counts; it is meant for one
event loop and is not thread-safe.  Reloading the configuration means
building a new one (which starts with full buckets and no sessions).

The package has three modules: :mod:`~pstp.daemon.policy.model` (requests,
:class:`Decision`, rule specs), :mod:`~pstp.daemon.policy.check` (:class:`Policy`,
the evaluator with its rate buckets) and :mod:`~pstp.daemon.policy.load` (the TOML
loader); every public name is re-exported here.
"""

from __future__ import annotations

from pstp.daemon.policy.check import Policy
from pstp.daemon.policy.model import (
    DEFAULT_MAX_LEN,
    MAX_REASON,
    ActionRequest,
    ActionSpec,
    ArgSpec,
    ArgValue,
    Decision,
    ExecRequest,
    ExecRule,
    FileRequest,
    FileRoot,
    ForwardRequest,
    ForwardTarget,
    ListenRequest,
    PeerPolicy,
    RateLimit,
    Request,
    SessionRequest,
    ShellRequest,
    TimeWindow,
    parse_target,
)

__all__ = [
    "DEFAULT_MAX_LEN",
    "MAX_REASON",
    "ActionRequest",
    "ActionSpec",
    "ArgSpec",
    "ArgValue",
    "Decision",
    "ExecRequest",
    "ExecRule",
    "FileRequest",
    "FileRoot",
    "ForwardRequest",
    "ForwardTarget",
    "ListenRequest",
    "PeerPolicy",
    "Policy",
    "RateLimit",
    "Request",
    "SessionRequest",
    "ShellRequest",
    "TimeWindow",
    "parse_target",
]
