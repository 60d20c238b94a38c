"""Independent Kafka follower for the crash harness (confluent-kafka): reads every partition
of the given topics from the beginning and keeps reading until killed, printing one JSON line
per record as it arrives: {"key", "ts_ns", "create_ms"} (create_ms: the record's CreateTime,
which the producer stamped when it produced it).

usage: kafka_follow.py BOOTSTRAP TOPIC [TOPIC...]
"""
import json
import sys

from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

bootstrap, topics = sys.argv[1], sys.argv[2:]
c = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "ferrule-crash-follower",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 50,
})
parts = []
for t in topics:
    md = c.list_topics(t, timeout=10).topics[t]
    if md.error is not None:
        sys.exit(f"topic {t}: {md.error}")
    parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in md.partitions]
c.assign(parts)
print(json.dumps({"ready": True}), flush=True)
while True:
    batch = c.consume(1000, 0.05)
    lines = []
    for m in batch:
        if m.error():
            print(json.dumps({"error": str(m.error())}), file=sys.stderr, flush=True)
            continue
        try:
            ts = json.loads(m.value() or b"{}").get("ts_ns")
        except ValueError:
            ts = None
        lines.append(json.dumps({
            "key": (m.key() or b"").decode(),
            "ts_ns": ts,
            "create_ms": m.timestamp()[1],
        }))
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
