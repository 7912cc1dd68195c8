"""QoS profiles from parameter values, and a one-line description for start-up logs."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
DURABILITY = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}


def make_qos(reliability: str, depth: int, durability: str = "volatile") -> QoSProfile:
    """KEEP_LAST profile from strings (`reliable`|`best_effort`, `volatile`|`transient_local`); ValueError otherwise."""
    if reliability not in RELIABILITY:
        raise ValueError(f"QoS reliability {reliability!r}: choose one of {sorted(RELIABILITY)}")
    if durability not in DURABILITY:
        raise ValueError(f"QoS durability {durability!r}: choose one of {sorted(DURABILITY)}")
    if depth < 1:
        raise ValueError(f"QoS depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=RELIABILITY[reliability], durability=DURABILITY[durability])


def describe(profile: QoSProfile) -> str:
    """E.g. `reliable, keep_last(1), volatile`."""
    return (f"{profile.reliability.name.lower()}, {profile.history.name.lower()}({profile.depth}), "
            f"{profile.durability.name.lower()}")
