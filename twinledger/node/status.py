"""What the node reports about itself: peers and consensus progress (GET /v1/network), and
its metrics in the Prometheus text format (GET /metrics)."""

from __future__ import annotations

from typing import Any

from twinledger.config import NodeConfig
from twinledger.net.peers import PeerManager
from twinledger.node.ledger import LedgerService


def network_view(config: NodeConfig, ledger: LedgerService, peers: PeerManager | None) -> dict[str, Any]:
    consensus = ledger.consensus
    head = ledger.head
    return {
        "organisation": config.organisation,
        "node": config.name,
        "consensus": consensus.name,
        "height": head.height,
        "head": head.hash.hex(),
        "round": consensus.last_round,
        "last_block_time": head.timestamp,
        "p2p": peers.address if peers is not None else None,
        "peers": [
            {
                "organisation": p.identity.organisation,
                "node": p.identity.node,
                "address": p.address,
                "height": p.height,
                "outbound": p.outbound,
            }
            for p in (peers.peers.values() if peers is not None else ())
        ],  # fmt: skip
        "equivocations": ledger.metrics.equivocations,
        "quorum": quorum_view(ledger, peers),
    }


def quorum_view(ledger: LedgerService, peers: PeerManager | None) -> dict[str, Any]:
    """Whether the validators this node reaches directly (itself included) are enough to
    commit a block, and who is out of reach: what explains a chain that stopped. Peers
    gossip, so in a consortium larger than a node's peer target this is a lower bound."""
    validators = ledger.consensus.validators()
    own = ledger.consensus.key
    reached = {own.public} if own is not None else set()
    if peers is not None:
        reached |= {p.identity.signing_key for p in peers.peers.values()}
    names = {v.key: v.organisation for v in ledger.genesis.validators}
    reachable = [names.get(key, key.hex()[:16]) for key in validators if key in reached]
    return {"validators": len(validators), "needed": ledger.consensus.quorum(), "reachable": reachable,
            "unreachable": [names.get(key, key.hex()[:16]) for key in validators if key not in reached],
            "can_commit": len(reachable) >= ledger.consensus.quorum()}  # fmt: skip


def metrics_text(ledger: LedgerService, peers: PeerManager | None) -> str:
    m = ledger.metrics
    lines = [
        "# HELP twinledger_height Height of the canonical head.",
        "# TYPE twinledger_height gauge",
        f"twinledger_height {ledger.head.height}",
        "# HELP twinledger_orphan_blocks Blocks waiting for their parent.",
        "# TYPE twinledger_orphan_blocks gauge",
        f"twinledger_orphan_blocks {ledger.chain.tree.orphan_count()}",
        "# HELP twinledger_consensus_round Round of the height being decided.",
        "# TYPE twinledger_consensus_round gauge",
        f"twinledger_consensus_round {ledger.consensus.last_round}",
        "# HELP twinledger_peers Connected peers.",
        "# TYPE twinledger_peers gauge",
        f"twinledger_peers {len(peers.peers) if peers is not None else 0}",
        "# HELP twinledger_mempool_transactions Transactions waiting for a block.",
        "# TYPE twinledger_mempool_transactions gauge",
        f"twinledger_mempool_transactions {len(ledger.mempool)}",
        "# HELP twinledger_equivocations_total Conflicting votes detected and stored as evidence.",
        "# TYPE twinledger_equivocations_total counter",
        f"twinledger_equivocations_total {m.equivocations}",
        "# HELP twinledger_transactions_accepted_total Transactions admitted to the mempool.",
        "# TYPE twinledger_transactions_accepted_total counter",
        f"twinledger_transactions_accepted_total {m.accepted}",
        "# HELP twinledger_transactions_committed_total Transactions committed in blocks.",
        "# TYPE twinledger_transactions_committed_total counter",
        f"twinledger_transactions_committed_total {m.committed}",
        "# HELP twinledger_blocks_committed_total Blocks committed since start.",
        "# TYPE twinledger_blocks_committed_total counter",
        f"twinledger_blocks_committed_total {m.blocks}",
        "# HELP twinledger_block_interval_seconds Time between the last two blocks.",
        "# TYPE twinledger_block_interval_seconds gauge",
        f"twinledger_block_interval_seconds {m.last_block_interval:.6f}",
        "# HELP twinledger_transactions_rejected_total Refused transactions by error code.",
        "# TYPE twinledger_transactions_rejected_total counter",
    ]
    lines += [f'twinledger_transactions_rejected_total{{code="{code}"}} {n}' for code, n in sorted(m.rejected.items())]
    lines += [
        "# HELP twinledger_commit_latency_seconds Submit-to-commit latency.",
        "# TYPE twinledger_commit_latency_seconds histogram",
    ]
    cumulative = 0
    for bound, count in zip((*[str(b) for b in m.BUCKETS], "+Inf"), m.latency_buckets, strict=True):
        cumulative += count
        lines.append(f'twinledger_commit_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
    lines.append(f"twinledger_commit_latency_seconds_sum {m.latency_sum:.6f}")
    lines.append(f"twinledger_commit_latency_seconds_count {m.latency_count}")
    return "\n".join(lines) + "\n"
