"""The cluster's ``/metrics``: each replica's exposition text, merged into one with a
``replica`` label on every sample (Prometheus sums or compares them across replicas), plus the
ingress's routing counters."""

from __future__ import annotations

from typing import Mapping


def _labelled(sample: str, replica: str) -> str:
    """`name{a="b"} 1` -> `name{replica="r",a="b"} 1`; `name 1` -> `name{replica="r"} 1`."""
    head, _, value = sample.rpartition(" ")
    if "{" in head:
        name, _, rest = head.partition("{")
        inner = rest[:-1]  # drop the closing brace
        labels = f'replica="{replica}"' + ("," + inner if inner else "")
    else:
        name, labels = head, f'replica="{replica}"'
    return f"{name}{{{labels}}} {value}"


def merge(texts: Mapping[str, str], routing: Mapping[str, int], failovers: int,
          failed: int) -> str:
    """One exposition of every replica's text (replica name -> text) and the routing counters."""
    families: dict[str, tuple[list[str], list[str]]] = {}  # name -> (HELP/TYPE lines, samples)
    for replica, text in sorted(texts.items()):
        family = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split()[2]
                meta, _ = families.setdefault(family, ([], []))
                if line not in meta:
                    meta.append(line)
                continue
            if line.startswith("#") or family is None:
                continue
            families[family][1].append(_labelled(line, replica))
    out: list[str] = []
    for meta, samples in families.values():
        out.extend(meta)
        out.extend(samples)
    counters = {"pyengine_cluster_requests_routed_total": ("Requests the ingress forwarded.", routing.get("routed", 0)),
                "pyengine_cluster_requests_keyed_total": ("Of those, requests with a prompt prefix key.", routing.get("keyed", 0)),
                "pyengine_cluster_prefix_hits_total": ("Keyed requests sent to a replica that had been sent their first block.", routing.get("prefix_hits", 0)),
                "pyengine_cluster_prefix_hit_blocks_total": ("Leading blocks those replicas had been sent.", routing.get("hit_blocks", 0)),
                "pyengine_cluster_failovers_total": ("Requests sent again to another replica after theirs failed before answering.", failovers),
                "pyengine_cluster_failed_total": ("Requests that failed at the ingress.", failed),
                "pyengine_cluster_replicas": ("Replicas whose metrics are current.", len(texts))}
    for name, (help_text, value) in counters.items():
        kind = "gauge" if name.endswith("_replicas") else "counter"
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(out) + "\n"
