"""The PPCP quick start's client.py, on PSTP: python ppcp_client.py (ppcp_server.py first).

The same code as in the README: find the server by broadcast, authenticate, send a
message, print the answer.
"""

from pstp import client_connect, find_server

pre_shared_key = b"super-secret-key"
server_socket = find_server(port=9000)  # UDP broadcast PING / PONG
session = client_connect(server_socket, pre_shared_key)
session.send(b"hello")
print(session.recv())  # b'hello'
