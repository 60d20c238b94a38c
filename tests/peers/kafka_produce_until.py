"""Independent Kafka producer for the crash harness (confluent-kafka, idempotent, acks=all):
record i is the `ferrule.sample.v1` sample of tag plant/site1/area1/line{i%3}/dev{i%50}/flow
(the key) at ts_ns = START + i * STEP, value i. Produces at RATE records/s until at least
MIN_N records were produced AND the file STOP exists, then flushes (up to 60 s) and prints
one JSON line: {"produced": n, "unacked": [indices without a successful delivery report]}.
Every other record was acknowledged by the broker. While running it prints {"acked": k}
every half second.

usage: kafka_produce_until.py BOOTSTRAP TOPIC MIN_N RATE START STEP STOP
"""
import json
import os
import sys
import time

from confluent_kafka import Producer

bootstrap, topic = sys.argv[1], sys.argv[2]
min_n, rate = int(sys.argv[3]), float(sys.argv[4])
start, step, stop = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
p = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
})
ok = bytearray()  # ok[i] = 1 once record i was acknowledged
acked = 0


def on_delivery(idx):
    def cb(err, _msg):
        global acked
        if err is None:
            ok[idx] = 1
            acked += 1
    return cb


t0 = time.time()
i = 0
last_print = 0.0
while i < min_n or not os.path.exists(stop):
    path = f"plant/site1/area1/line{i % 3}/dev{i % 50}/flow"
    body = {"value": float(i), "unit": "bar", "quality": "good", "status": 0,
            "ts_ns": start + i * step, "path": path}
    ok.append(0)
    while True:
        try:
            p.produce(topic, key=path.encode(), value=json.dumps(body).encode(),
                      on_delivery=on_delivery(i))
            break
        except BufferError:
            p.poll(0.05)
    p.poll(0)
    i += 1
    now = time.time()
    if now - last_print > 0.5:
        print(json.dumps({"acked": acked}), flush=True)
        last_print = now
    ahead = i / rate - (now - t0)
    if ahead > 0:
        time.sleep(ahead)
p.flush(60)
unacked = [j for j, f in enumerate(ok) if not f]
print(json.dumps({"produced": i, "unacked": unacked}), flush=True)
