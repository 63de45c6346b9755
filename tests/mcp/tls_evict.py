"""One TLS client thread parked inside SSL_read while THREADS other
threads (and as many server threads) each make a TLS round trip of their
own, through the system OpenSSL (Python's ssl module): more threads than
the agent's TLS thread table holds when it is run with a small
`--tls-threads`, so the parked thread's state is evicted before its read
returns.

Prints `parked` once the parked read has been entered (the server holds its
answer), then `done` with the number of round trips once the parked read
has returned its answer.

usage: tls_evict.py CERT KEY THREADS
"""

import socket
import ssl
import sys
import threading

cert, key, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])

server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(cert, key)
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE

listener = socket.create_server(("127.0.0.1", 0), backlog=64)
port = listener.getsockname()[1]
# The server's answer to the parked client waits for this.
release = threading.Event()
# Set by the server once it has the parked client's request: the client is
# then in (or about to enter) its read, which blocks until `release`.
parked_asked = threading.Event()

PARKED = b'{"jsonrpc":"2.0","id":0,"method":"ping"}\n'


def serve(conn):
    with server_ctx.wrap_socket(conn, server_side=True) as s:
        asked = s.recv(4096)
        if asked == PARKED:
            parked_asked.set()
            release.wait()
        s.sendall(asked)


def accept():
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def round_trip(message):
    with client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as s:
        s.sendall(message)
        return s.recv(4096)


threading.Thread(target=accept, daemon=True).start()

answer = []
parked = threading.Thread(target=lambda: answer.append(round_trip(PARKED)))
parked.start()
parked_asked.wait()
print("parked", flush=True)

# Each round trip on a new client thread (and a new server thread): every
# one is a thread the TLS table has not seen.
for i in range(threads):
    message = b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % (i + 1)
    t = threading.Thread(target=round_trip, args=(message,))
    t.start()
    t.join()

release.set()
parked.join()
assert answer == [PARKED], answer
print("done", threads, flush=True)
