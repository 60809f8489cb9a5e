"""The end of a commune's database role (``sobriety site remove``): it reads nothing more, then
it is dropped. Its making is :func:`core.roles.apply_site_reader`."""

from __future__ import annotations

import psycopg
from psycopg import sql

from core.roles import RolesError, _owner, site_reader_name

__all__ = ["drop_site_reader"]


def drop_site_reader(conn: psycopg.Connection, prefix: str, site: str) -> str:
    """Take every right of the role of commune ``site`` in this database and drop it, in one
    transaction: ``'dropped'``, or ``'absent'`` when there is no such role. :class:`RolesError`
    when the role still holds rights elsewhere (another database of the cluster)."""
    role = site_reader_name(prefix, site)
    with conn.transaction():
        owner = _owner(conn)
        conn.execute("DELETE FROM site_readers WHERE role = %s", (role,))
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            return "absent"
        ident = sql.Identifier(role)
        conn.execute(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA api REVOKE SELECT ON TABLES FROM {}"
            ).format(sql.Identifier(owner), ident)
        )
        conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                sql.Identifier(str(conn.info.dbname)), ident
            )
        )
        conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))  # its grants here
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DROP ROLE {}").format(ident))
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise RolesError(
                f"role {role} cannot be dropped: {exc.diag.message_detail or exc} (it has "
                "rights in another database: remove the site there too, or REVOKE them)"
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise RolesError(
                f"role {role}: {exc.diag.message_primary or exc} — dropping it needs CREATEROLE "
                "and ADMIN on it (the user that made it has both)"
            ) from None
    return "dropped"
