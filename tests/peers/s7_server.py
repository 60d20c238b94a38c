"""An S7 CPU for Ferrule's tests: python-snap7's server with the areas and values of a JSON
spec, each value encoded by snap7.util (an implementation independent of Ferrule's decoder).

usage: s7_server.py <port> <spec.json>
spec: {"areas": [{"area": "DB"|"MK"|"PE"|"PA", "index": 10, "size": 64,
                  "values": [{"offset": 4, "type": "real", "value": 1.5},
                             {"offset": 2, "bit": 3, "type": "bool", "value": true},
                             {"offset": 8, "type": "string", "max": 10, "value": "PUMP"},
                             {"offset": 20, "type": "dt", "value": "2024-02-29T13:45:56.789"}]}],
       "counter": {"area": "DB", "index": 1, "offset": 0, "start": 0, "period_ms": 20}}
The counter (a DINT) counts up from `start` every `period_ms` while the server runs.
"""
import datetime
import json
import signal
import sys
import time

import snap7
from snap7 import util
from snap7.type import SrvArea

AREAS = {"DB": SrvArea.DB, "MK": SrvArea.MK, "PE": SrvArea.PE, "PA": SrvArea.PA}

SETTERS = {
    "byte": util.set_byte,
    "usint": util.set_usint,
    "sint": util.set_sint,
    "word": util.set_word,
    "int": util.set_int,
    "uint": util.set_uint,
    "dword": util.set_dword,
    "dint": util.set_dint,
    "udint": util.set_udint,
    "real": util.set_real,
    "lreal": util.set_lreal,
    "lint": util.set_lint,
    "ulint": util.set_ulint,
    "lword": util.set_lword,
    "char": util.set_char,
}


def put(buf, v):
    t, off = v["type"], v["offset"]
    if t == "bool":
        util.set_bool(buf, off, v["bit"], v["value"])
    elif t == "string":
        util.set_string(buf, off, v["value"], v["max"])
    elif t == "dt":
        util.set_dt(buf, off, datetime.datetime.fromisoformat(v["value"]))
    elif t == "time":
        util.set_dint(buf, off, v["value"])  # TIME is a DINT of milliseconds
    elif t == "raw":
        buf[off : off + len(v["value"])] = bytes(v["value"])
    else:
        SETTERS[t](buf, off, v["value"])


def main():
    port, spec = int(sys.argv[1]), json.load(open(sys.argv[2]))
    server = snap7.server.Server(log=False)
    arrays = {}
    for a in spec["areas"]:
        buf = bytearray(a["size"])
        for v in a.get("values", []):
            put(buf, v)
        # The server serves a registered bytearray itself: writes to it are live.
        arrays[(a["area"], a.get("index", 0))] = buf
        server.register_area(AREAS[a["area"]], a.get("index", 0), buf)
    server.start(tcp_port=port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    counter = spec.get("counter")
    n = counter["start"] if counter else 0
    try:
        while True:
            if counter:
                buf = arrays[(counter["area"], counter.get("index", 0))]
                off = counter["offset"]
                buf[off : off + 4] = n.to_bytes(4, "big", signed=True)
                n += 1
                time.sleep(counter.get("period_ms", 20) / 1000)
            else:
                time.sleep(1)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
