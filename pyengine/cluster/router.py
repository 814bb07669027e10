"""The Ray Serve request router of the replicas: each request goes to a replica whose prefix
cache most likely holds its prompt's first blocks, balanced against queue length.

For every replica the router remembers the block hashes (``prefix_keys``) of the requests it
sent there (a bounded LRU, as the replica's own cache is bounded). A request ranks the replicas
by how many of its leading blocks each one has seen: the best ones form the first rank, two of
them drawn at random, and Ray Serve takes the one with the shorter queue that has room; when
both are full it falls to the next rank, so a hot prefix spreads once its replica saturates.
A request with no key, or one no replica has seen, is placed by power of two choices.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any, List, Optional

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, \
    RunningReplica

def _key(pending: Optional[PendingRequest]) -> list[str]:
    if pending is None:
        return []
    blocks = pending.kwargs.get("route_blocks") if isinstance(pending.kwargs, dict) else None
    return blocks if isinstance(blocks, list) else []


def _two(replicas: list) -> list:
    return random.sample(replicas, min(2, len(replicas)))


class PrefixAwareRouter(RequestRouter):
    """``request_router_kwargs``: ``max_blocks`` (hashes remembered per replica, default
    65,536: 1M tokens), ``policy`` ("prefix", or "random" for plain power of two choices, the
    comparison the benchmark makes)."""

    def initialize_state(self, max_blocks: int = 65536, policy: str = "prefix", **_: Any) -> None:
        if policy not in ("prefix", "random"):
            raise ValueError(f"policy must be 'prefix' or 'random', got {policy!r}")
        self._max_blocks = int(max_blocks)
        self._policy = policy
        self._seen: dict[ReplicaID, OrderedDict[str, None]] = {}

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        super().update_replicas(replicas)
        # A replica that died took its cache with it: forget what it held.
        live = {r.replica_id for r in replicas}
        for rid in [rid for rid in getattr(self, "_seen", {}) if rid not in live]:
            del self._seen[rid]

    def _matched(self, rid: ReplicaID, blocks: list[str]) -> int:
        seen = self._seen.get(rid)
        if not seen:
            return 0
        n = 0
        for h in blocks:  # chained hashes: the first miss ends the shared prefix
            if h not in seen:
                break
            n += 1
        return n

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None,
                              ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        blocks = _key(pending_request)
        if self._policy == "random" or not blocks:
            return [_two(candidate_replicas)]
        score = {r.replica_id: self._matched(r.replica_id, blocks) for r in candidate_replicas}
        best = max(score.values())
        if best == 0:
            return [_two(candidate_replicas)]
        top = [r for r in candidate_replicas if score[r.replica_id] == best]
        rest = [r for r in candidate_replicas if score[r.replica_id] < best]
        return [_two(top)] + ([_two(rest)] if rest else [])

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        blocks = _key(pending_request)
        if not blocks:
            return
        seen = self._seen.setdefault(replica_id, OrderedDict())
        for h in blocks:
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > self._max_blocks:
            seen.popitem(last=False)
