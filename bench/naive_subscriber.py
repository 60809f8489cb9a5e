"""Baseline for the ingest benchmark: the naive subscriber everybody writes first.

paho at QoS 1, one multi-row INSERT and one COMMIT per message, no validation, no dedup
(paho acknowledges after the callback returns, so it does not lose acknowledged messages, but it
is bounded by the commit latency). Runs until SIGTERM, then prints one JSON line with the
publish→commit latencies it saw (s).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--client-id", required=True)
    args = parser.parse_args()

    conn = psycopg.connect(args.db)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS naive_readings (time timestamptz, device text, "
        "metric text, value double precision)"
    )
    conn.commit()
    lags: list[float] = []
    stop = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        pack = orjson.loads(msg.payload)
        device = msg.topic.split("/")[-2]
        bt = pack[0].get("bt", 0.0)
        rows = [(bt + r.get("t", 0.0), device, r["n"], r["v"]) for r in pack]
        values = ", ".join(["(to_timestamp(%s), %s, %s, %s)"] * len(rows))
        conn.execute(
            f"INSERT INTO naive_readings VALUES {values}",
            [x for row in rows for x in row],
        )
        conn.commit()
        lags.append(time.time() - max(r[0] for r in rows))

    def on_connect(c: mqtt.Client, *_a: object) -> None:
        c.subscribe(f"{args.root}/+/+/up", qos=1)

    url = urlsplit(args.url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5
    )
    client.on_message = on_message
    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect(
        url.hostname or "127.0.0.1", url.port or 1883, clean_start=False, properties=props
    )
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"lags": lags}))


if __name__ == "__main__":
    main()
