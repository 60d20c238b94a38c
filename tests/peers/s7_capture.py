"""Captures the frames python-snap7's client and server exchange on loopback (through a
logging proxy) for Ferrule's S7 framing unit tests: prints each frame as hex, client first.

usage: s7_capture.py   (prints `C <hex>` / `S <hex>` lines)
"""
import ctypes
import socket
import threading

import snap7
from snap7.type import Area, SrvArea


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def frames(sock, tag, out, peer):
    buf = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        peer.sendall(chunk)
        buf += chunk
        while len(buf) >= 4:
            n = int.from_bytes(buf[2:4], "big")
            if len(buf) < n:
                break
            out.append((tag, buf[:n].hex()))
            buf = buf[n:]


def main():
    server_port, proxy_port = free_port(), free_port()
    db1 = (ctypes.c_uint8 * 16)(*range(0x10, 0x20))
    mk = (ctypes.c_uint8 * 8)(*range(0xA0, 0xA8))
    server = snap7.server.Server(log=False)
    server.register_area(SrvArea.DB, 1, db1)
    server.register_area(SrvArea.MK, 0, mk)
    server.start(tcp_port=server_port)

    out = []
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", proxy_port))
    listener.listen(1)

    def proxy():
        c, _ = listener.accept()
        s = socket.create_connection(("127.0.0.1", server_port))
        threading.Thread(target=frames, args=(c, "C", out, s), daemon=True).start()
        threading.Thread(target=frames, args=(s, "S", out, c), daemon=True).start()

    threading.Thread(target=proxy, daemon=True).start()
    client = snap7.client.Client()
    client.connect("127.0.0.1", 0, 1, proxy_port)
    try:
        client.read_multi_vars([
            {"area": Area.DB, "db_number": 1, "start": 0, "size": 4},
            {"area": Area.DB, "db_number": 1, "start": 10, "size": 3},
            {"area": Area.MK, "db_number": 0, "start": 2, "size": 2},
            {"area": Area.DB, "db_number": 99, "start": 0, "size": 2},
        ])
    except Exception as e:  # the missing DB may raise; the frames are what matter
        print("#", e)
    import time
    time.sleep(0.3)
    client.disconnect()
    server.stop()
    for tag, h in out:
        print(tag, h)


if __name__ == "__main__":
    main()
