"""The node's own certificate, renewed by the node before it runs out.

Node certificates live ``LEAF_VALIDITY`` (90 days): a certificate that leaks, or whose
organisation left, is useful for weeks, not years. A node renews its own from its
organisation's CA (``keys/organisation-ca.key`` in its home) when less than
``RENEW_WITHIN`` is left — at start, and hourly while it runs — and loads it into every
TLS context it serves and dials with, so a node that runs for months never stops
talking. Membership, not expiry, is what ends a removed organisation's access
(``contracts/membership.node_standing``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from twinledger.config import NodeConfig, finish_renewal, passphrase, renew_node_certificate
from twinledger.crypto.certs import RENEW_WITHIN, read_certificate
from twinledger.crypto.tls import reload_identity
from twinledger.errors import TwinledgerError

log = logging.getLogger("twinledger.node")

CHECK_INTERVAL = 3600.0
"""Seconds between a running node's looks at its certificate's end."""


class CertificateRenewal:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config

    def expires(self) -> dt.datetime:
        return read_certificate(self.config.cert("node")).not_valid_after_utc

    def renew_if_due(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """Renew if less than RENEW_WITHIN is left; the new end, or None if not due."""
        finish_renewal(self.config)
        if self.expires() - (now or dt.datetime.now(dt.UTC)) > RENEW_WITHIN:
            return None
        end = renew_node_certificate(self.config)
        reloaded = reload_identity(self.config.cert("node-chain"), passphrase())
        log.info("renewed this node's certificate until %s (%d TLS contexts now present it)",
                 end.isoformat(timespec="minutes"), reloaded)  # fmt: skip
        return end

    def renew_or_warn(self) -> None:
        try:
            self.renew_if_due()
        except (TwinledgerError, OSError, ValueError) as exc:
            left = self.expires() - dt.datetime.now(dt.UTC)
            log.error("could not renew this node's certificate (%s); it runs out in %d days: run twinledger node "
                      "renew-cert where the organisation's CA key is", getattr(exc, "message", exc), left.days)  # fmt: skip

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            await asyncio.to_thread(self.renew_or_warn)
