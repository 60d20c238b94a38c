"""A Modbus TCP server that answers reads and swallows writes (Python standard library only),
for the write-back tests: a device that goes away in the middle of a write.

Usage: modbus_write_blackhole.py PORT

Read holding registers (function 3): every register holds 7. Any other function: the
server reads the request, never answers, and closes the connection after 5 s.
"""

import asyncio
import struct
import sys


async def handle(reader, writer):
    try:
        while True:
            header = await reader.readexactly(7)
            tid, _proto, length, unit = struct.unpack(">HHHB", header)
            pdu = await reader.readexactly(length - 1)
            function = pdu[0]
            if function != 3:
                await asyncio.sleep(5)
                writer.close()
                return
            _, _address, count = struct.unpack(">BHH", pdu[:5])
            body = struct.pack(">BB", 3, 2 * count) + struct.pack(">H", 7) * count
            writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
