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

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RunningReplica

from pyengine.cluster.prefix_keys import matched_blocks

def _key(pending: Optional[PendingRequest]) -> list[str]:
    if pending is None:
        return []
    blocks = pending.kwargs.get("route_blocks") if isinstance(pending.kwargs, dict) else None
    return blocks if isinstance(blocks, list) else []


def _two(replicas: list) -> list:
    return random.sample(replicas, min(2, len(replicas)))


# Ray Serve's own router (power of two choices, with its FIFO order and locality) places the
# requests without a key; this class only ranks the replicas of those with one.
class PrefixAwareRouter(PowerOfTwoChoicesRequestRouter):
    """``request_router_kwargs``: ``max_blocks`` (hashes remembered per replica, default
    65,536: 1M tokens); ``min_match_blocks`` (default 4: 64 tokens; a shorter match, such as
    the chat template's first line every request starts with, is not worth a detour);
    ``max_imbalance`` (default 8, half of what a replica takes at once: when the best-matching
    replica has that many more requests in flight than the least busy one, the request is
    balanced instead)."""

    def initialize_state(self, max_blocks: int = 65536, min_match_blocks: int = 4,
                         max_imbalance: int = 8, **_: Any) -> None:
        self._max_blocks = int(max_blocks)
        self._min_match = int(min_match_blocks)
        self._max_imbalance = int(max_imbalance)
        self._seen: dict[ReplicaID, OrderedDict[str, None]] = {}

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        super().update_replicas(replicas)
        # A replica that died took its cache with it: forget what it held.
        live = {r.replica_id for r in replicas}
        for rid in [rid for rid in getattr(self, "_seen", {}) if rid not in live]:
            del self._seen[rid]

    def _matched(self, rid: ReplicaID, blocks: list[str]) -> int:
        seen = self._seen.get(rid)
        return matched_blocks(blocks, seen) if seen else 0

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None,
                              ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        blocks = _key(pending_request)
        score = {r.replica_id: self._matched(r.replica_id, blocks) for r in candidate_replicas}
        best = max(score.values()) if blocks else 0
        top = [r for r in candidate_replicas if score[r.replica_id] == best]
        if best < self._min_match or self._too_busy(top, candidate_replicas):
            # No key, a prefix no replica has been sent (or too short to matter), or its
            # replicas far busier than the rest: balance.
            return await super().choose_replicas(candidate_replicas, pending_request)
        rest = [r for r in candidate_replicas if score[r.replica_id] < best]
        return [_two(top)] + ([_two(rest)] if rest else [])

    def _too_busy(self, top: List[RunningReplica], everyone: List[RunningReplica]) -> bool:
        """True when the least busy of the best-matching replicas has max_imbalance more
        requests in flight (as last reported to this router) than the least busy replica."""
        def load(r: RunningReplica) -> int:
            n = self.replica_queue_len_cache.get(r.replica_id)
            return 0 if n is None else int(n)

        return min(map(load, top)) - min(map(load, everyone)) >= self._max_imbalance

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
