"""Independent Kafka producer (confluent-kafka): N `ferrule.sample.v1` records keyed by tag
path over 20 tags, ts_ns = START + i, paced at RATE records/s, idempotent, acks=all.

usage: kafka_produce.py BOOTSTRAP TOPIC N RATE START
"""
import json
import sys
import time

from confluent_kafka import Producer

bootstrap, topic, n, rate, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
t0 = time.time()
for i in range(n):
    path = f"plant/site1/area1/line1/dev{i % 20}/flow"
    body = {"value": i * 0.5, "unit": "bar", "quality": "good", "status": 0,
            "ts_ns": start + i, "path": path}
    p.produce(topic, key=path.encode(), value=json.dumps(body).encode())
    p.poll(0)
    ahead = (i + 1) / rate - (time.time() - t0)
    if ahead > 0:
        time.sleep(ahead)
left = p.flush(30)
sys.exit(1 if left else 0)
