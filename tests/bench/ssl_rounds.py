"""Rounds of TLS through Python's ssl module over memory BIOs, in one
process: per round the client's SSLObject.write (SSL_write_ex) and the
server's SSLObject.read (SSL_read_ex), as the MCP SDK's asyncio streams
call them. No sockets: the time is OpenSSL's and its hooks'. Prints
{"us_per_round": ...}.

usage: ssl_rounds.py CERT KEY ROUNDS
"""

import json
import ssl
import sys
import time

cert, key, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(cert, key)
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE
c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
server = server_ctx.wrap_bio(s_in, s_out, server_side=True)


def pump():
    data = c_out.read()
    if data:
        s_in.write(data)
    data = s_out.read()
    if data:
        c_in.write(data)


done = False
for _ in range(20):
    done = True
    for end in (client, server):
        try:
            end.do_handshake()
        except ssl.SSLWantReadError:
            done = False
    pump()
    if done:
        break
if not done:
    sys.exit("handshake did not finish")

message = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}\n'
start = time.perf_counter()
for _ in range(rounds):
    client.write(message)
    pump()
    if server.read(4096) != message:
        sys.exit("a round lost its message")
elapsed = time.perf_counter() - start
print(json.dumps({"us_per_round": elapsed / rounds * 1e6}))
