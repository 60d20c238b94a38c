"""Independent Kafka checker (confluent-kafka, its own librdkafka): reads every partition of
the given topics from the beginning and prints one JSON line per record:
{"topic","partition","offset","key","value","headers"}. Stops when `expect` records were
read and nothing more arrived for `idle` seconds, or after `timeout` seconds.

usage: kafka_read.py BOOTSTRAP EXPECT TIMEOUT_S TOPIC [TOPIC...]
"""
import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

bootstrap, expect, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
topics = sys.argv[4:]
c = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "ferrule-test-checker",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
})
parts = []
for t in topics:
    md = c.list_topics(t, timeout=10).topics[t]
    if md.error is not None:
        sys.exit(f"topic {t}: {md.error}")
    parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in md.partitions]
c.assign(parts)
n = 0
deadline = time.time() + timeout
last = time.time()
idle = 1.5
while time.time() < deadline:
    m = c.poll(0.2)
    if m is None:
        if n >= expect and time.time() - last > idle:
            break
        continue
    if m.error():
        print(json.dumps({"error": str(m.error())}), file=sys.stderr)
        continue
    last = time.time()
    n += 1
    raw = m.value() or b""
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw.decode("utf-8", "replace")
    print(json.dumps({
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "key": (m.key() or b"").decode(),
        "value": value,
        "headers": {k: (v or b"").decode() for k, v in (m.headers() or [])},
    }))
c.close()
