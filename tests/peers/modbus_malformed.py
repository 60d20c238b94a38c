"""A misbehaving Modbus TCP server for Ferrule's tests (Python standard library only).

Usage: modbus_malformed.py PORT

Answers read-holding-registers requests by start address:
  0   a well-formed frame with one register fewer than asked for;
  10  a frame with a wrong protocol identifier (garbage on the wire);
  20  a frame with the wrong transaction id;
  any other address: a correct answer, register value = its address.
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
            function, address, count = struct.unpack(">BHH", pdu[:5])
            proto = 0
            if function != 3:
                body = struct.pack(">BB", function | 0x80, 1)
            else:
                n = count - 1 if address == 0 else count
                values = [address + i for i in range(n)]
                body = struct.pack(">BB", 3, 2 * n) + b"".join(
                    struct.pack(">H", v & 0xFFFF) for v in values
                )
                if address == 10:
                    proto = 0x1234
                if address == 20:
                    tid = (tid + 1) & 0xFFFF
            writer.write(struct.pack(">HHHB", tid, proto, len(body) + 1, unit) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
