"""A commune's gateway identity on the broker (``sobriety site add|remove``): a line of
Mosquitto's ``password_file`` and a block of its ``acl_file``, added or taken out.

The password line is ``user:$7$ITERATIONS$SALT$HASH``, Mosquitto 2's own format: PBKDF2 with
HMAC-SHA512 over the password, a 12-byte random salt, a 64-byte hash, salt and hash in base64
(what ``mosquitto_passwd`` writes, made here so that the operator's host needs no Mosquitto).
The ACL block names the user and the topics of its site only — publish telemetry, exchange
state, read its config and commands — so it holds on a broker whose ACL has no ``%u``
patterns. Both files are rewritten whole through a temporary file and a rename: the broker,
rereading them on SIGHUP, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import tempfile
from pathlib import Path

from core.contract import DEFAULT_ROOT
from core.errors import UsageError

__all__ = [
    "ITERATIONS",
    "PLATFORM_USERS",
    "acl_block",
    "check_user",
    "hash_password",
    "remove_acl_block",
    "remove_password",
    "set_acl_block",
    "set_password",
]

ITERATIONS = 20_000
"""PBKDF2 rounds of a password line (``mosquitto_passwd`` uses 101 by default; a broker
verifies each login once, so the slower hash costs little and resists guessing more)."""

PLATFORM_USERS = frozenset({"sobriety-ingest", "sobriety-policies"})
"""The platform's own broker users (deploy/mosquitto/acl): no site may take their names."""


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The Mosquitto 2 hash of ``password`` (``$7$...``)."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_user(user: str) -> None:
    """:class:`UsageError` when ``user`` cannot be a gateway's broker user name."""
    if user in PLATFORM_USERS:
        raise UsageError(f"--site {user!r}: the name of a platform broker user; choose another id")
    if ":" in user or not user.strip():
        raise UsageError(f"--site {user!r}: not usable as a broker user name")


def _rewrite(path: Path, lines: list[str], mode: int) -> None:
    """Replace ``path`` by ``lines``; an existing file's mode and (when allowed: root) owner
    are kept, so that the broker, running as its own user, can still read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = None
    if path.exists():
        info = path.stat()
        mode, owner = info.st_mode & 0o777, (info.st_uid, info.st_gid)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("".join(f"{line}\n" for line in lines))
        Path(tmp).chmod(mode)
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, *owner)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the broker's file ({exc})") from None


def set_password(path: Path, user: str, password: str) -> str:
    """Add or replace ``user``'s line in the password file ``path`` (made if absent, mode
    0600): ``'added'`` or ``'replaced'``."""
    check_user(user)
    lines = _read_lines(path)
    kept = [line for line in lines if line.split(":", 1)[0] != user]
    _rewrite(path, [*kept, f"{user}:{hash_password(password)}"], 0o600)
    return "added" if len(kept) == len(lines) else "replaced"


def remove_password(path: Path, user: str) -> bool:
    """Take ``user``'s line out of the password file; whether there was one."""
    lines = _read_lines(path)
    kept = [line for line in lines if line.split(":", 1)[0] != user]
    if len(kept) == len(lines):
        return False
    _rewrite(path, kept, 0o600)
    return True


def _marks(site: str) -> tuple[str, str]:
    return (f"# sobriety site {site}: begin", f"# sobriety site {site}: end")


def acl_block(site: str, root: str = DEFAULT_ROOT) -> list[str]:
    """The ACL lines of ``site``'s gateway user (named after the site)."""
    begin, end = _marks(site)
    base = f"{root.rstrip('/')}/{site}/+"
    return [
        begin,
        f"user {site}",
        f"topic write {base}/up",
        f"topic readwrite {base}/state",
        f"topic read {base}/config",
        f"topic read {base}/cmd",
        end,
    ]


def _without_block(lines: list[str], site: str) -> tuple[list[str], bool]:
    begin, end = _marks(site)
    out: list[str] = []
    inside = found = False
    for line in lines:
        if line == begin:
            inside = found = True
        elif inside and line == end:
            inside = False
        elif not inside:
            out.append(line)
    return out, found


def set_acl_block(path: Path, site: str, root: str = DEFAULT_ROOT) -> str:
    """Add ``site``'s block to the ACL file at its end, or replace it: ``'added'``,
    ``'replaced'`` or ``'unchanged'`` (a new file: mode 0644)."""
    check_user(site)
    lines = _read_lines(path)
    kept, found = _without_block(lines, site)
    new = [*kept, *acl_block(site, root)]
    if new == lines:
        return "unchanged"
    _rewrite(path, new, 0o644)
    return "replaced" if found else "added"


def remove_acl_block(path: Path, site: str) -> bool:
    """Take ``site``'s block out of the ACL file; whether there was one."""
    lines = _read_lines(path)
    kept, found = _without_block(lines, site)
    if found:
        _rewrite(path, kept, 0o644)
    return found
