"""Load generator for the ingest benchmark: a separate process publishing SenML at QoS 1.

Every record carries the time it was published, so "commit time - reading time" is the
publish→commit latency. At most ``--outstanding`` messages await their PUBACK (paho numbers
QoS 1 messages with 16-bit ids). Prints one JSON line: published, start, end (s since epoch).

    python bench/publisher.py --url mqtt://127.0.0.1:1883 --root bench/v1 --site b \
        --devices 1000 --messages 50000 --records 10 [--rate 5000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--site", required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s; 0 = full speed")
    parser.add_argument("--outstanding", type=int, default=10000)
    parser.add_argument("--offset", type=int, default=0, help="first message number")
    args = parser.parse_args()

    url = urlsplit(args.url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.time_ns()}")
    client.max_inflight_messages_set(20)
    client.max_queued_messages_set(0)
    acked = [0]
    lock = threading.Lock()

    def on_publish(*_a: object) -> None:
        with lock:
            acked[0] += 1

    client.on_publish = on_publish
    client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=60)
    client.loop_start()
    topics = [f"{args.root}/{args.site}/d{i}/up" for i in range(args.devices)]
    bns = [f"d{i}:" for i in range(args.devices)]
    start = time.time()
    interval = 1.0 / args.rate if args.rate else 0.0
    # The base time of a message is its publish time, so "commit time - reading time" is the
    # latency; records 1.. are 1 ms apart after it. A device's next message starts after its
    # previous records (publish may be fast enough to go round all devices within 10 ms), so
    # (device, metric, time) is unique by construction and every reading must be stored.
    step = 1e-3
    next_free = [0.0] * args.devices
    for n in range(args.offset, args.offset + args.messages):
        dev = n % args.devices
        seq = n // args.devices
        bt = max(time.time(), next_free[dev])
        next_free[dev] = bt + (args.records + 1) * step
        pack = [{"bn": bns[dev], "bt": bt, "n": "power", "v": seq}]
        pack += [{"n": "energy", "t": r * step, "v": seq + r} for r in range(1, args.records)]
        client.publish(topics[dev], orjson.dumps(pack), qos=1)
        sent = n - args.offset + 1
        if interval:
            delay = start + sent * interval - time.time()
            if delay > 0:
                time.sleep(delay)
        while sent - acked[0] > args.outstanding:
            time.sleep(0.0005)
    while acked[0] < args.messages:
        time.sleep(0.001)
    end = time.time()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"published": args.messages, "start": start, "end": end}))


if __name__ == "__main__":
    main()
