"""Task statuses and the one place where transitions are checked.

    waiting -> running -> done
    waiting -> running -> part_done -> running -> done     (two-stage training)
    running -> <status it was claimed from>                (return, error retry, lease expiry)
    running -> failed                                      (last attempt used up)

Administrative resets (``reset_status``, ``reset_waiting``) may move any task to
``waiting`` or ``part_done``; they clear the lease, so a zombie's late commit is refused.
"""

from __future__ import annotations

from alphamill.errors import IllegalTransition

WAITING = "waiting"
RUNNING = "running"
PART_DONE = "part_done"
DONE = "done"
FAILED = "failed"

STATUSES: tuple[str, ...] = (WAITING, RUNNING, PART_DONE, DONE, FAILED)

#: Statuses a worker may claim from.
CLAIMABLE: frozenset[str] = frozenset({WAITING, PART_DONE})
#: Statuses a lease holder may commit.
COMMITTABLE: frozenset[str] = frozenset({PART_DONE, DONE})

_WORKER_TRANSITIONS: dict[str, frozenset[str]] = {
    WAITING: frozenset({RUNNING}),
    PART_DONE: frozenset({RUNNING}),
    RUNNING: frozenset({DONE, PART_DONE, WAITING, FAILED}),
    DONE: frozenset(),
    FAILED: frozenset(),
}

_ADMIN_TARGETS: frozenset[str] = frozenset({WAITING, PART_DONE, DONE, FAILED})


def check_status(status: str, field: str = "status") -> str:
    """Return ``status`` if it is known, else raise naming the field."""
    if status not in STATUSES:
        raise IllegalTransition(f"{field}: unknown status {status!r}; expected one of {', '.join(STATUSES)}")
    return status


def check_transition(old: str, new: str, *, admin: bool = False) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is allowed."""
    check_status(old, "from status")
    check_status(new, "to status")
    if admin:
        if new in _ADMIN_TARGETS:
            return
    elif new in _WORKER_TRANSITIONS[old]:
        return
    kind = "administrative reset" if admin else "transition"
    raise IllegalTransition(f"illegal {kind} {old!r} -> {new!r}")
