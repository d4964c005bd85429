"""The fleet's events into the checker, through one door: the ear (``ear``: off the broker, on
a thread of its own) hands them to the inbox (``inbox.Inbox``: stamped with their arrival,
waiting for the loop; ``Hearing`` and ``IntakeWatch``: whether the checker hears the fleet
well enough to judge silence), and the loop reads each with ``read`` (``observations``: one
parse per kind of event, into the policy's observations)."""

from healthcheck.intake.ear import Ear, RedisEar
from healthcheck.intake.inbox import Hearing, Inbox, IntakeWatch
from healthcheck.intake.observations import EVENT_TYPES, Intake, Observed, read

__all__ = ["EVENT_TYPES", "Ear", "Hearing", "Inbox", "Intake", "IntakeWatch", "Observed",
           "RedisEar", "read"]
