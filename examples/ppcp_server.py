"""The PPCP quick start's server.py, on PSTP: python ppcp_server.py (then ppcp_client.py).

The same code as in the README. The client finds it by a UDP broadcast PING on the LAN;
the secret is a passphrase, so the session runs PSTP-PAKE (SPAKE2+).
"""

from pstp import create_tcp_server, server_accept

pre_shared_key = b"super-secret-key"
listener = create_tcp_server("0.0.0.0", 9000)  # also answers discovery PINGs
print("waiting for clients on port 9000")
while True:
    sock, addr = listener.accept()
    session = server_accept(sock, pre_shared_key)
    print(f"Connected to {session.client_id}!")
    session.send(session.recv())  # echo one message back
