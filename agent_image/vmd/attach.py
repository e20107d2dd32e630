#!/usr/bin/env python3
"""The bot's relay into the VM: one `docker exec -i python3 /opt/vmd/attach.py` per VM (stdlib only).

Connects to vmd's unix socket ($VMD_RUN_DIR/vmd.sock, retrying while the helper starts) and copies bytes
stdin -> socket and socket -> stdout, unbuffered and binary. Stdin EOF half-closes the socket; the process
exits when the socket side ends. It never writes to stdout on its own (the bot speaks first); problems go
to stderr, which the bot logs.
"""

import os
import socket
import threading
import time

SOCK = os.path.join(os.environ.get("VMD_RUN_DIR", "/run/vmd"), "vmd.sock")
CONNECT_WAIT = 15.0


def connect() -> socket.socket:
    deadline = time.monotonic() + CONNECT_WAIT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(SOCK)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def pump_in(sock: socket.socket) -> None:
    try:
        while data := os.read(0, 1 << 16):
            sock.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def pump_out(sock: socket.socket) -> None:
    try:
        while data := sock.recv(1 << 18):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
    except OSError:
        pass


def main() -> int:
    try:
        sock = connect()
    except OSError as exc:
        os.write(2, f"attach: the VM helper (vmd) is not reachable at {SOCK}: {exc}\n".encode())
        return 1
    threading.Thread(target=pump_in, args=(sock,), daemon=True).start()
    pump_out(sock)
    return 0


if __name__ == "__main__":
    os._exit(main())
