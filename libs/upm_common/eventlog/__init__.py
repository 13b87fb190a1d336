"""The durable event log and change feed: one interface, a SQL and a Redis Streams backend."""

from upm_common.eventlog.base import (
    EVENTS,
    MEMBERSHIP_CHANGES,
    PROFILE_CHANGES,
    Delivery,
    EventLog,
    LogRecord,
    consumer_name,
    dead_letter_topic,
)
from upm_common.eventlog.factory import create_event_log

__all__ = [
    "EVENTS",
    "MEMBERSHIP_CHANGES",
    "PROFILE_CHANGES",
    "Delivery",
    "EventLog",
    "LogRecord",
    "consumer_name",
    "create_event_log",
    "dead_letter_topic",
]
