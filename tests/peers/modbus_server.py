"""An independent Modbus TCP server for Ferrule's interop tests (pymodbus).

Usage: modbus_server.py PORT SPEC.json

SPEC: {"unit": 1,
       "holding": [{"address": 0, "type": "f32", "order": "CDAB", "value": 1.5}, ...],
       "input":   [...same...],
       "coils":   [{"address": 0, "values": [true, false]}],
       "discrete": [...same...],
       "failures": [{"table": "holding", "address": 90, "exception": 4}]}
Register values are encoded here with Python's struct module (big-endian bytes, then words
reordered as the order names them), independently of Ferrule's decoder. Addresses not
listed are invalid: a read touching them gets exception 0x02 (illegal data address).
"""

import asyncio
import json
import struct
import sys

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FORMATS = {
    "u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i",
    "u64": ">Q", "i64": ">q", "f32": ">f", "f64": ">d",
}
TABLE_CODES = {"coils": (1,), "discrete": (2,), "holding": (3,), "input": (4,)}


def words_of(entry):
    kind = entry["type"]
    if kind == "string":
        raw = entry["value"].encode()
        data = raw.ljust(2 * entry["length"], b"\0")
    else:
        data = struct.pack(FORMATS[kind], entry["value"])
    words = [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]
    order = entry.get("order", "ABCD")
    if order in ("BADC", "DCBA"):
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    return words


# pymodbus needs at least one block per table: an empty table gets a lone unused cell.
PLACEHOLDER = 65000


def register_blocks(entries):
    return [
        SimData(e["address"], values=words_of(e), datatype=DataType.REGISTERS)
        for e in entries
    ] or [SimData(PLACEHOLDER, values=[0], datatype=DataType.REGISTERS)]


def bit_blocks(entries):
    return [
        SimData(e["address"], values=[bool(v) for v in e["values"]], datatype=DataType.BITS)
        for e in entries
    ] or [SimData(PLACEHOLDER, values=[False], datatype=DataType.BITS)]


def main():
    port = int(sys.argv[1])
    with open(sys.argv[2]) as f:
        spec = json.load(f)
    failures = spec.get("failures", [])

    async def action(function_code, _start, address, count, _registers, _set_values):
        for fail in failures:
            if function_code in TABLE_CODES[fail["table"]] and (
                address <= fail["address"] < address + count
            ):
                return ExcCodes(fail["exception"])
        return None

    device = SimDevice(
        id=spec.get("unit", 1),
        simdata=(
            bit_blocks(spec.get("coils", [])),
            bit_blocks(spec.get("discrete", [])),
            register_blocks(spec.get("holding", [])),
            register_blocks(spec.get("input", [])),
        ),
        use_bit_addressing=True,
        action=action,
    )

    async def serve():
        server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
