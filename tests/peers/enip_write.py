"""Writes tag values into an EtherNet/IP controller (or cpppo's simulator) with pylogix, an
implementation independent of Ferrule's, and exits non-zero if any write fails.

usage: enip_write.py <port> '<json: [[tag, value], ...]>'
"""
import json
import sys

from pylogix import PLC

port, values = int(sys.argv[1]), json.loads(sys.argv[2])
with PLC() as plc:
    plc.IPAddress = "127.0.0.1"
    plc.Port = port
    failed = []
    for tag, value in values:
        r = plc.Write(tag, value)
        if r.Status != "Success":
            failed.append(f"{tag}: {r.Status}")
if failed:
    sys.exit("writes failed: " + "; ".join(failed))
