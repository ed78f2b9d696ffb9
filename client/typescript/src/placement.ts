// Consistent-hash placement, the same function as protocol/placement.h:
// every member owns 150 virtual nodes at XXH3-64 of "<node id>#<i>" on a
// 64-bit ring; a key (XXH3-64 of its bytes) belongs to the first N distinct
// members clockwise from its position (the first point at or after it,
// wrapping around); ties between positions are broken by member.
import xxhash from '@node-rs/xxhash';

export const VIRTUAL_NODES_PER_MEMBER = 150;

/** XXH3-64 of the bytes, as the servers place keys. */
export function keyHash(key: Uint8Array): bigint {
  return xxhash.xxh3.xxh64(key as Buffer);
}

function compareBytes(a: string, b: string): number {
  // std::sort on std::string compares bytes: UTF-8 order is code point order.
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return Buffer.compare(x, y);
}

export class Ring {
  readonly members: string[];
  private readonly positions: BigUint64Array;
  private readonly owners: Uint32Array;

  constructor(members: string[], virtualNodes = VIRTUAL_NODES_PER_MEMBER) {
    this.members = [...new Set(members)].sort(compareBytes);
    const points: Array<[bigint, number]> = [];
    this.members.forEach((member, index) => {
      for (let i = 0; i < virtualNodes; i++) {
        points.push([keyHash(Buffer.from(`${member}#${i}`)), index]);
      }
    });
    points.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]));
    this.positions = BigUint64Array.from(points.map((p) => p[0]));
    this.owners = Uint32Array.from(points.map((p) => p[1]));
  }

  preferenceList(key: Uint8Array, n: number): string[] {
    return this.preferenceListOfHash(keyHash(key), n);
  }

  preferenceListOfHash(hash: bigint, n: number): string[] {
    const wanted = Math.min(n, this.members.length);
    const owners: string[] = [];
    const count = this.positions.length;
    if (wanted === 0 || count === 0) return owners;
    let low = 0;
    let high = count;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.positions[mid] < hash) low = mid + 1;
      else high = mid;
    }
    const taken = new Set<number>();
    for (let step = 0; step < count && owners.length < wanted; step++) {
      const member = this.owners[(low + step) % count];
      if (taken.has(member)) continue;
      taken.add(member);
      owners.push(this.members[member]);
    }
    return owners;
  }
}
