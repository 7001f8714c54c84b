"""Peer-to-peer networking: TLS 1.3 with consortium certificates, framed canonical messages."""
