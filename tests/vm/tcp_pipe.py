"""The two ends of a migration over TCP, for hosts with nothing but Python (no ssh, nc or
socat in the test environment): the transport xl leaves to `migrate -s`.

    python tcp_pipe.py listen ADDR PORT -- COMMAND...   (on the receiving host)
    python tcp_pipe.py connect ADDR PORT                (migrate -s "" ... this)

`listen` prints "listening" once it listens, takes one connection and runs COMMAND with
the socket as its stdin and stdout (as inetd would); its exit status is COMMAND's.
`connect` carries its stdin to the socket and the socket to its stdout until both end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading


def listen(addr: str, port: int, command: list[str]) -> int:
    with socket.create_server((addr, port)) as server:
        print("listening", flush=True)
        conn, _ = server.accept()
    with conn:
        return subprocess.run(command, stdin=conn, stdout=conn).returncode


def connect(addr: str, port: int) -> int:
    sock = socket.create_connection((addr, port))

    def outbound() -> None:
        while data := os.read(0, 1 << 16):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # the sender is done: the receiver sees EOF

    threading.Thread(target=outbound, daemon=True).start()
    while data := sock.recv(1 << 16):
        os.write(1, data)
    return 0


def main() -> int:
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "listen":
        return listen(addr, port, sys.argv[sys.argv.index("--") + 1:])
    return connect(addr, port)


if __name__ == "__main__":
    sys.exit(main())
