"""Consistent-hash placement, the same function as protocol/placement.h.

Every member owns 150 virtual nodes at XXH3-64 of "<node id>#<i>" on a 64-bit
ring; a key (XXH3-64 of its bytes) belongs to the first N distinct members
clockwise from its position (the first point at or after it, wrapping
around). Ties between positions are broken by member, as the servers do.
"""
import bisect

VIRTUAL_NODES_PER_MEMBER = 150


def _xxh3():
    try:
        import xxhash
    except ImportError as error:  # pragma: no cover - documented in README
        raise ImportError(
            "cluster routing needs the xxhash module (Debian: python3-xxhash); "
            "see client/python/README.md") from error
    return xxhash.xxh3_64_intdigest


def key_hash(key: bytes) -> int:
    """XXH3-64 of the key's bytes, as the servers place it."""
    return _xxh3()(key)


class Ring:
    """An immutable ring of members (node ids)."""

    def __init__(self, members, virtual_nodes=VIRTUAL_NODES_PER_MEMBER):
        hash_of = _xxh3()
        self.members = sorted(set(members))
        points = []
        for index, member in enumerate(self.members):
            for i in range(virtual_nodes):
                points.append((hash_of(("%s#%d" % (member, i)).encode()), index))
        points.sort()
        self._positions = [position for position, _ in points]
        self._owners = [index for _, index in points]
        self._hash = hash_of

    def preference_list(self, key: bytes, n: int):
        return self.preference_list_of_hash(self._hash(key), n)

    def preference_list_of_hash(self, hashed: int, n: int):
        wanted = min(n, len(self.members))
        owners = []
        if wanted == 0 or not self._positions:
            return owners
        start = bisect.bisect_left(self._positions, hashed)
        taken = set()
        count = len(self._positions)
        for step in range(count):
            member = self._owners[(start + step) % count]
            if member in taken:
                continue
            taken.add(member)
            owners.append(self.members[member])
            if len(owners) == wanted:
                break
        return owners
