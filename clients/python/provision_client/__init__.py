"""The platform's side of tenant provisioning.

- `request_tenant(...)` asks for a tenant inside the caller's transaction,
  through the SQL function `provision_request_tenant`: nothing happens until
  the transaction commits, and a rollback leaves nothing.
- `tenant_status(schema_name)` reads the view `provision_tenant_status`.
- `wait_until_ready(schema_name, timeout)` waits on the notifications of
  the channel `provision_tenant_state`, not by polling.

It uses Django's own database connection (and driver): nothing else to
install.
"""

import json
import select
import time
from dataclasses import dataclass
from typing import Optional

from django.contrib.auth.hashers import make_password
from django.db import DatabaseError, connections

__all__ = [
    "Conflict",
    "InvalidField",
    "ProvisionError",
    "Requested",
    "TenantStatus",
    "request_tenant",
    "tenant_status",
    "wait_until_ready",
]

STATE_CHANNEL = "provision_tenant_state"
_INVALID = "PV010"
_CONFLICT = "PV011"


class ProvisionError(Exception):
    """A request refused: `field` is the field at fault, `rule` what is wrong."""

    def __init__(self, field, rule, message):
        super().__init__(message)
        self.field = field
        self.rule = rule


class InvalidField(ProvisionError):
    """A value breaks one of the rules (SQLSTATE PV010)."""


class Conflict(ProvisionError):
    """A value clashes with what exists, such as a schema name requested with
    other details (SQLSTATE PV011)."""


@dataclass(frozen=True)
class Requested:
    """What `request_tenant` found: `recorded` is 'new' or 'existing'."""

    schema_name: str
    state: str
    recorded: str


@dataclass(frozen=True)
class TenantStatus:
    """A row of `provision_tenant_status`."""

    schema_name: str
    state: str
    failed_step: Optional[str]
    last_error: Optional[str]
    requested_at: object
    ready_at: object
    lifecycle: str

    @property
    def final(self):
        return self.state in ("ready", "failed")


def _sqlstate_and_field(error):
    cause = getattr(error, "__cause__", None) or error
    code = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
    diag = getattr(cause, "diag", None)
    field = getattr(diag, "column_name", None) if diag is not None else None
    message = getattr(diag, "message_primary", None) if diag is not None else None
    return code, field, message or str(cause).strip()


def request_tenant(
    schema_name,
    tenant_name,
    domain=None,
    admin_email=None,
    password=None,
    password_hash=None,
    trial_days=30,
    seed_demo_data=True,
    using="default",
):
    """Asks for tenant `schema_name` in the current transaction of database
    `using`. Give `password` (hashed here with Django's `make_password`), or
    `password_hash` (already made by `make_password`), or neither for an
    unusable password (a set-your-password link). Returns `Requested`; the
    same request twice is one tenant ('existing' the second time). Raises
    `InvalidField` or `Conflict` naming the field."""
    if password is not None and password_hash is not None:
        raise ValueError("give password or password_hash, not both")
    if password is not None:
        password_hash = make_password(password)
    connection = connections[using]
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT schema_name, state, recorded FROM public.provision_request_tenant("
                "schema_name => %s, tenant_name => %s, domain => %s, admin_email => %s, "
                "admin_password_hash => %s, trial_days => %s, seed_demo_data => %s)",
                [schema_name, tenant_name, domain, admin_email, password_hash, trial_days, seed_demo_data],
            )
            row = cursor.fetchone()
    except DatabaseError as error:
        code, field, message = _sqlstate_and_field(error)
        if code in (_INVALID, _CONFLICT):
            rule = message.split(": ", 1)[1] if ": " in message else message
            kind = InvalidField if code == _INVALID else Conflict
            raise kind(field, rule, message) from error
        raise
    return Requested(*row)


def tenant_status(schema_name, using="default"):
    """The provisioning state of `schema_name`, or None if it was never
    requested."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT schema_name, state, failed_step, last_error, requested_at, ready_at, lifecycle "
            "FROM public.provision_tenant_status WHERE schema_name = %s",
            [schema_name],
        )
        row = cursor.fetchone()
    return TenantStatus(*row) if row else None


def _listening_connection(using):
    """A connection of the driver Django uses, of its own and in autocommit,
    so LISTEN neither joins nor waits on the caller's transaction."""
    wrapper = connections[using]
    raw = wrapper.get_new_connection(wrapper.get_connection_params())
    raw.autocommit = True
    return raw


def _notifications(raw, timeout):
    """The payloads of the notifications `raw` receives within `timeout`
    seconds (psycopg2 and psycopg 3)."""
    if hasattr(raw, "notifies") and callable(raw.notifies):
        for notice in raw.notifies(timeout=timeout, stop_after=1):
            yield notice.payload
        return
    if select.select([raw], [], [], timeout) == ([], [], []):
        return
    raw.poll()
    while raw.notifies:
        yield raw.notifies.pop(0).payload


def wait_until_ready(schema_name, timeout=60.0, using="default"):
    """Waits until `schema_name` is `ready` or `failed`, at most `timeout`
    seconds, listening on `provision_tenant_state`. Returns its
    `TenantStatus` (not final if the time ran out), or None if it was never
    requested. Call it after the request's transaction has committed."""
    raw = _listening_connection(using)
    try:
        with raw.cursor() as cursor:
            cursor.execute("LISTEN " + STATE_CHANNEL)
        # Listening first, then looking: a notification sent in between is
        # not lost.
        status = tenant_status(schema_name, using)
        deadline = time.monotonic() + timeout
        while status is not None and not status.final:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for payload in _notifications(raw, left):
                try:
                    notice = json.loads(payload)
                except ValueError:
                    continue
                if notice.get("schema_name") == schema_name:
                    status = tenant_status(schema_name, using)
        return status
    finally:
        raw.close()
