"""Reads one value from a Modbus TCP server with pymodbus's own client, decoded here with
Python's struct module (independently of Ferrule's codec), for the write-back tests.

Usage: modbus_read.py PORT TABLE ADDRESS TYPE [ORDER] [BIT|LENGTH]
TABLE: holding | coil. TYPE: u16 i16 u32 i32 u64 i64 f32 f64 string bool.
Prints the value as JSON (a number, a bool for coils and bits, a text for strings), or
{"error": "..."} when the server does not answer.
"""

import json
import struct
import sys

from pymodbus.client import ModbusTcpClient

FORMATS = {
    "u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i",
    "u64": ">Q", "i64": ">q", "f32": ">f", "f64": ">d",
}


def main():
    port, table, address, kind = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    order = sys.argv[5] if len(sys.argv) > 5 else "ABCD"
    extra = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
    if not client.connect():
        print(json.dumps({"error": "cannot connect"}))
        return
    try:
        if table == "coil":
            r = client.read_coils(address, count=1)
            print(json.dumps({"error": str(r)}) if r.isError() else json.dumps(bool(r.bits[0])))
            return
        count = {"string": extra, "bool": 1}.get(kind) or struct.calcsize(FORMATS[kind]) // 2
        r = client.read_holding_registers(address, count=count)
        if r.isError():
            print(json.dumps({"error": str(r)}))
            return
        words = list(r.registers)
        if order in ("CDAB", "DCBA"):
            words.reverse()
        if order in ("BADC", "DCBA"):
            words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
        data = b"".join(struct.pack(">H", w) for w in words)
        if kind == "bool":
            print(json.dumps(bool((words[0] >> extra) & 1)))
        elif kind == "string":
            print(json.dumps(data.rstrip(b"\0 ").decode()))
        else:
            print(json.dumps(struct.unpack(FORMATS[kind], data)[0]))
    finally:
        client.close()


if __name__ == "__main__":
    main()
