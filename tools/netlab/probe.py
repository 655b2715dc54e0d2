"""Measures round-trip time and throughput between two netlab hosts over TCP.

netlab.sh check starts `probe.py serve PORT` on one host and `probe.py measure ADDR PORT BYTES
PINGS` on another. The server echoes small messages (for the round-trip time) and swallows bulk
data, answering with one byte when all of it arrived (so the sender's clock covers delivery).
Only the standard library is used.
"""
import socket
import struct
import sys
import time


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def serve(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    srv.settimeout(30)
    conn, _ = srv.accept()
    conn.settimeout(60)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        header = conn.recv(9, socket.MSG_WAITALL)
        if len(header) < 9:
            return
        kind, size = struct.unpack("!cQ", header)
        if kind == b"p":  # ping: echo the header back
            conn.sendall(header)
        elif kind == b"b":  # bulk: read size bytes, then acknowledge
            left = size
            while left:
                chunk = conn.recv(min(left, 1 << 20))
                if not chunk:
                    raise ConnectionError("sender closed mid-transfer")
                left -= len(chunk)
            conn.sendall(b"k")
        else:
            return


def measure(addr, port, nbytes, pings):
    sock = None
    for _ in range(100):  # the server may still be starting
        try:
            sock = socket.create_connection((addr, port), timeout=60)
            break
        except (ConnectionRefusedError, OSError):
            time.sleep(0.05)
    if sock is None:
        sys.exit("probe: cannot connect to %s:%d" % (addr, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(pings):
        t0 = time.perf_counter()
        sock.sendall(struct.pack("!cQ", b"p", 0))
        recv_exact(sock, 9)
        rtts.append((time.perf_counter() - t0) * 1000)
    rtts.sort()
    payload = b"\0" * (1 << 20)
    t0 = time.perf_counter()
    sock.sendall(struct.pack("!cQ", b"b", nbytes))
    left = nbytes
    while left:
        n = min(left, len(payload))
        sock.sendall(payload[:n])
        left -= n
    recv_exact(sock, 1)
    secs = time.perf_counter() - t0
    sock.sendall(struct.pack("!cQ", b"q", 0))
    print("rtt_ms min %.3f median %.3f max %.3f (%d pings)"
          % (rtts[0], rtts[len(rtts) // 2], rtts[-1], len(rtts)))
    print("throughput_mbit %.1f (%d bytes in %.3f s)" % (nbytes * 8 / secs / 1e6, nbytes, secs))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    elif len(sys.argv) == 6 and sys.argv[1] == "measure":
        measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: probe.py serve PORT | probe.py measure ADDR PORT BYTES PINGS")
