#!/usr/bin/env python3
"""A TLS client that trickles its bytes in, one at a time, to a TLS port.

  trickle.py handshake PORT          the first bytes of a ClientHello
  trickle.py record PORT CA_FILE     a whole handshake, then one record

Every byte resets the server's idle clock; only a deadline on the handshake
(or on the record) ends the connection. Prints the seconds until the server
closed it and exits 0, or exits 1 if it was still open after BOUND_S seconds
(a bound that only stops a hang, not a clock threshold).
"""
import select
import socket
import ssl
import sys
import time

BOUND_S = 30
GAP_S = 0.1


def closed(sock, incoming=None):
    """Whether the server closed sock (what it sent meanwhile is kept)."""
    while select.select([sock], [], [], 0)[0]:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not data:
            return True
        if incoming is not None:
            incoming.write(data)
    return False


def trickle(sock, data, incoming=None):
    start = time.monotonic()
    for byte in data:
        if closed(sock, incoming):
            return time.monotonic() - start
        try:
            sock.send(bytes([byte]))
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
        if time.monotonic() - start > BOUND_S:
            return None
        time.sleep(GAP_S)
    return None


def handshake(port):
    sock = socket.create_connection(("127.0.0.1", port))
    # A handshake record of TLS 1.x announcing a ClientHello of 508 bytes,
    # never finished.
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(497)
    return trickle(sock, hello)


def record(port, ca_file):
    context = ssl.create_default_context(cafile=ca_file)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                sys.exit("the server closed the connection during the handshake")
            incoming.write(data)
    sock.sendall(outgoing.read())
    # One record; all of it but its last 1,000 bytes at once, then the rest
    # a byte at a time: it never comes whole within the bound.
    tls.write(b"x" * 3000)
    sealed = outgoing.read()
    sock.sendall(sealed[:-1000])
    return trickle(sock, sealed[-1000:], incoming)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "handshake":
        seconds = handshake(int(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "record":
        seconds = record(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(__doc__)
    if seconds is None:
        print(f"still open after {BOUND_S} s")
        return 1
    print(f"closed after {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
