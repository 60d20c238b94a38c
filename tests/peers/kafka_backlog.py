"""Independent Kafka producer for the backlog test: N `ferrule.sample.v1` records keyed by tag
path over 1 000 tags, ts_ns = START + i, as fast as the broker takes them (idempotent,
acks=all, lz4). Prints the number acknowledged.

usage: kafka_backlog.py BOOTSTRAP TOPIC N START
"""
import sys

from confluent_kafka import Producer

bootstrap, topic, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
acked = 0


def delivered(err, _msg):
    global acked
    if err is None:
        acked += 1


p = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "linger.ms": 20,
    "batch.num.messages": 10000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500000,
})
paths = [f"plant/site1/area1/line{t % 10}/dev{t}/flow" for t in range(1000)]
keys = [q.encode() for q in paths]
for i in range(n):
    t = i % 1000
    body = b'{"value":%d,"unit":"bar","quality":"good","status":0,"ts_ns":%d,"path":"%s"}' % (
        i, start + i, paths[t].encode())
    while True:
        try:
            p.produce(topic, key=keys[t], value=body, on_delivery=delivered)
            break
        except BufferError:
            p.poll(0.05)
    if i % 10000 == 0:
        p.poll(0)
left = p.flush(120)
print(acked)
sys.exit(1 if left else 0)
