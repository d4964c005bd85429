"""Whether this checker may act now, and the token its writes are fenced with."""

from __future__ import annotations

from healthcheck.lease import Leadership


class Lead:
    """This checker's standing, as every part that writes or acts asks for it.

    Args:
        leadership: the lease (None: a checker that runs alone, without one, always leads).
    """

    def __init__(self, leadership: Leadership | None) -> None:
        self.leadership = leadership

    def leading(self) -> bool:
        """True when this checker may act (it holds the lease, or runs without one)."""
        return self.leadership is None or self.leadership.leading()

    @property
    def fence(self) -> str:
        """The lease token every write is fenced with ("" without a lease)."""
        if self.leadership is None:
            return ""
        return self.leadership.token or "none"  # not leading: a token no lease ever matches

    @property
    def epoch(self) -> int | None:
        """The epoch this checker leads under (None without a lease)."""
        return None if self.leadership is None else self.leadership.epoch
