"""Independent Kafka producer (confluent-kafka) of records numbered as a Ferrule Kafka sink
numbers them: N `ferrule.sample.v1` records to partition 0 of TOPIC with the headers
ferrule-pub=PUB, ferrule-epoch=EPOCH, ferrule-seq=i (1..N), leaving out numbers
SKIP_FROM..=SKIP_TO (as if those records were lost). ts_ns = START + i.

usage: kafka_produce_numbered.py BOOTSTRAP TOPIC PUB EPOCH N SKIP_FROM SKIP_TO START
"""
import json
import sys

from confluent_kafka import Producer

bootstrap, topic, pub, epoch = sys.argv[1:5]
n, skip_from, skip_to, start = (int(a) for a in sys.argv[5:9])
p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
for i in range(1, n + 1):
    if skip_from <= i <= skip_to:
        continue
    path = f"plant/site1/area1/line1/ext{i % 5}/flow"
    body = {"value": i * 0.5, "unit": "bar", "quality": "good", "status": 0,
            "ts_ns": start + i, "path": path}
    p.produce(topic, key=path.encode(), value=json.dumps(body).encode(), partition=0,
              headers=[("ferrule-pub", pub.encode()), ("ferrule-epoch", epoch.encode()),
                       ("ferrule-seq", str(i).encode())])
    p.poll(0)
sys.exit(1 if p.flush(30) else 0)
