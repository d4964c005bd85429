"""Handing a message back to the broker unstarted, once, without counting it as a failure.

On Redis, kombu's ``reject(requeue=True)`` puts the message back in its queue for another
worker, and that is all it does. On RabbitMQ it does two things host must not have:

* the broker puts a requeued message back at the *head* of the queue, so a worker that is still
  subscribed gets the same message straight back (hundreds of rejections a second);
* on a quorum queue every ``basic.reject`` counts towards the delivery limit: a message handed
  back twenty times is dropped or dead-lettered although it never ran.

So on RabbitMQ a hand-back is a *re-publish and acknowledge*: the same body, headers and
properties are published again (publisher-confirmed, through the default exchange to the queue
it came from, so it joins the tail and starts a fresh delivery count), and only then is the
original acknowledged. A crash between the two leaves both copies: the task may run twice,
never zero times. Each copy carries ``host_handed_back``, how often it has been handed back.
Should the re-publish fail, the message is rejected with requeue as on Redis: nothing is lost.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from broker_config.app import settings_of
from broker_config.logs import get_logger
from workers.runtime import RUNTIME

log = get_logger(__name__)
#: kombu's *_log_error helpers format %-style: they get a standard logger.
_kombu_log = logging.getLogger(__name__)

#: The header a re-published copy carries: how often the message has been handed back.
HANDED_BACK_HEADER = "host_handed_back"
#: AMQP properties a re-published copy keeps (the rest are the broker's, per delivery).
_KEPT = ("correlation_id", "reply_to", "priority", "delivery_mode", "expiration", "message_id",
         "timestamp", "type", "user_id", "app_id")

#: Guards RUNTIME.handback_connection (the consumer and the request hooks both publish).
_lock = threading.Lock()


def remember_tags(task_consumer: Any) -> None:
    """Note which queue each current consumer tag reads (called before cancelling them)."""
    for queue, tag in dict(getattr(task_consumer, "_active_tags", {}) or {}).items():
        RUNTIME.tag_queues[str(tag)] = str(queue)


def source_queue(message: Any, task_consumer: Any = None) -> str:
    """The queue ``message`` was delivered from (its consumer tag, else its routing key)."""
    info = message.delivery_info or {}
    if task_consumer is not None:
        remember_tags(task_consumer)
    tag = info.get("consumer_tag")
    return RUNTIME.tag_queues.get(str(tag), "") or str(info.get("routing_key") or "")


def republishes(app: Any) -> bool:
    """True when handing back means re-publishing (RabbitMQ), not requeueing (Redis)."""
    return bool(settings_of(app).broker_is_amqp)


def hand_back(app: Any, message: Any, queue: str, errors: Any = ()) -> str:
    """Give ``message`` back to the broker unstarted; how: ``republished``, ``requeued`` or
    ``returned`` (its channel had closed, which gave it back)."""
    how = _give_back(app, message, queue, errors)
    headers = message.headers if isinstance(message.headers, dict) else {}
    before = headers.get(HANDED_BACK_HEADER)
    log.info("message_handed_back", task_id=headers.get("id"), queue=queue, how=how,
             handed_back_before=before if isinstance(before, int) else 0)
    return how


def _give_back(app: Any, message: Any, queue: str, errors: Any) -> str:
    if republishes(app):
        if not getattr(getattr(message, "channel", None), "is_open", True):
            return "returned"  # its channel closed: the broker has taken it back already
        try:
            _republish(app, message, queue)
        except Exception as exc:  # the broker is away: requeue, as on Redis
            log.warning("hand_back_republish_failed", error=str(exc), queue=queue)
        else:
            message.ack_log_error(_kombu_log, errors)
            return "republished"
    message.reject_log_error(_kombu_log, errors, requeue=True)
    return "requeued"


def _republish(app: Any, message: Any, queue: str) -> None:
    from kombu import Producer

    headers = dict(message.headers or {})
    count = headers.get(HANDED_BACK_HEADER)
    headers[HANDED_BACK_HEADER] = (count if isinstance(count, int) else 0) + 1
    props = message.properties or {}
    kept = {k: props[k] for k in _KEPT if props.get(k) is not None}
    with _lock:
        producer = Producer(_channel(app))
        producer.publish(message.body, exchange="", routing_key=queue, headers=headers,
                         content_type=message.content_type,
                         content_encoding=message.content_encoding, **kept)


def _channel(app: Any) -> Any:
    """A publisher-confirmed channel of this process's own (reconnected when it broke)."""
    connection = RUNTIME.handback_connection
    if connection is not None and not connection.connected:
        connection.release()
        connection = None
    if connection is None:
        options = {**(app.conf.broker_transport_options or {}), "confirm_publish": True}
        connection = app.connection_for_write(transport_options=options)
        connection.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.2)
        RUNTIME.handback_connection = connection
    return connection.default_channel
