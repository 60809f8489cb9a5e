"""amqtt, the pure-Python MQTT broker, in a thread of this process: the fallback of a machine
without mosquitto. It speaks MQTT 3.1.1 only (no session expiry, no shared subscriptions: one
ingest worker) and keeps sessions and queued messages in memory. amqtt's own
``AnonymousAuthPlugin`` marks every session anonymous, and amqtt drops anonymous sessions and
their queued QoS 1 messages as soon as a client disconnects; we accept every client with the
plain ``BaseAuthPlugin`` instead, so persistent sessions keep their messages while the ingest
restarts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from app.embedded.base import DEMO_EXTRA, Found, ServiceError
from app.embedded.probe import MQTT_311, mqtt_up
from app.embedded.procs import PORT_ATTEMPTS, free_port, quiet

log = logging.getLogger("sobriety.embedded")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class AmqttBroker:
    """amqtt's broker served by an event loop of its own in a daemon thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"amqtt-{port}", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._broker: Any = None

    def start(self) -> None:
        """Start and wait until it listens; raises what made it fail."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            self.stop()
            raise ServiceError(f"amqtt did not start within {START_TIMEOUT_S} s")
        if self._error is not None:
            self._thread.join(STOP_TIMEOUT_S)
            raise self._error

    async def _serve(self) -> None:
        from amqtt.broker import Broker  # type: ignore[import-untyped]
        from amqtt.contexts import (  # type: ignore[import-untyped]
            BrokerConfig,
            ListenerConfig,
            ListenerType,
        )

        config = BrokerConfig(
            listeners={
                "default": ListenerConfig(type=ListenerType.TCP, bind=f"127.0.0.1:{self.port}")
            },
            # Not AnonymousAuthPlugin: it marks every session anonymous, and amqtt then drops a
            # disconnected persistent session with its queued messages. The base plugin accepts
            # every client without that mark.
            plugins={"amqtt.plugins.base.BaseAuthPlugin": {}},
        )
        self._broker = Broker(config, loop=self._loop)
        await self._broker.start()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the starting thread
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        """Shut the broker down and end its thread; safe to call twice."""
        if not self._thread.is_alive():
            return
        if self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                future.result(timeout=STOP_TIMEOUT_S)
            except Exception:
                log.warning("amqtt did not shut down cleanly", exc_info=True)
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT_S)


def start_amqtt() -> Found:
    """amqtt on a free port; it keeps sessions and queued messages in memory only."""
    quiet("amqtt", "transitions")
    try:
        import amqtt  # type: ignore[import-untyped]  # noqa: F401 - is the extra installed?
    except ImportError:
        raise ServiceError(
            f"no mosquitto here and the amqtt broker is not installed: {DEMO_EXTRA}"
        ) from None
    error: BaseException | None = None
    for _ in range(PORT_ATTEMPTS):
        broker = AmqttBroker(free_port())
        try:
            broker.start()
        except Exception as exc:  # noqa: BLE001 - whatever amqtt raised: retried, then reported
            error = exc
            continue
        if mqtt_up(broker.port, MQTT_311):
            log.info("started amqtt (MQTT 3.1.1) on 127.0.0.1:%d", broker.port)
            return Found(f"mqtt://127.0.0.1:{broker.port}", "amqtt", broker.stop, MQTT_311)
        broker.stop()
    raise ServiceError(f"amqtt did not start: {error or 'no CONNACK'}")
