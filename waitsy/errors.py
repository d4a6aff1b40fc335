"""What can go wrong while waiting, each named for what Waitsy does next."""


class UsageError(Exception):
    """Bad arguments, an unknown workflow or job, a refused token: exit 3."""


class Unreachable(Exception):
    """The service is down, restarting or overloaded: keep trying."""


class NoWaitRoute(Exception):
    """The service predates GET /wait: poll instead (a date gate) or give up (a coverage gate)."""
