"""Reads one node's value with asyncua's own client, for the write-back tests.

Usage: opcua_read.py PORT NODE_ID
Prints {"value": ..., "type": "<VariantType name>"} as JSON.
"""

import asyncio
import json
import sys

from asyncua import Client


async def main():
    port, node_id = int(sys.argv[1]), sys.argv[2]
    async with Client(f"opc.tcp://127.0.0.1:{port}/ferrule/", timeout=5) as client:
        dv = await client.get_node(node_id).read_data_value()
        print(json.dumps({"value": dv.Value.Value, "type": dv.Value.VariantType.name}))


if __name__ == "__main__":
    asyncio.run(main())
