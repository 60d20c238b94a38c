"""Produces one write-back command record with confluent-kafka, for the write-back tests.

usage: kafka_command.py BOOTSTRAP TOPIC KEY CORRELATION_ID JSON
"""
import sys

from confluent_kafka import Producer

bootstrap, topic, key, corr, body = sys.argv[1:6]
p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
p.produce(topic, key=key.encode(), value=body.encode(), headers=[("correlation_id", corr.encode())])
sys.exit(1 if p.flush(30) else 0)
