// The friend graph, loaded the way presenced's is in the benchmark: the lines
// `presenced seed friendships --random` posts to /v1/friendships/import
// (CSV `address_a,address_b`, '#' comments, or JSON lines ["a", "b"]).

const ADDRESS = /^0x[0-9a-f]{40}$/

export class FriendGraph {
  private readonly friends = new Map<string, Set<string>>()
  private static readonly NONE: ReadonlySet<string> = new Set()

  friendsOf(address: string): ReadonlySet<string> {
    return this.friends.get(address) ?? FriendGraph.NONE
  }

  get size(): number {
    return this.friends.size
  }

  /** Adds every pair, or none if a line is malformed: [added, existing, errors]. */
  importLines(text: string): { lines: number; friendships: number; added: number; existing: number; errors: string[] } {
    const pairs: [string, string][] = []
    const errors: string[] = []
    const lines = text.split(/\r\n|\r|\n/)
    if (lines.length && lines[lines.length - 1] === "") lines.pop()
    lines.forEach((raw, i) => {
      const pair = parseLine(raw)
      if (pair === undefined) return
      if (typeof pair === "string") errors.push(`line ${i + 1}: ${pair}`)
      else pairs.push(pair)
    })
    let added = 0
    if (errors.length === 0) {
      for (const [a, b] of pairs) {
        if (this.link(a, b)) added++
      }
    }
    return { lines: lines.length, friendships: pairs.length, added, existing: pairs.length - added, errors }
  }

  private link(a: string, b: string): boolean {
    const mine = this.setOf(a)
    if (mine.has(b)) return false
    mine.add(b)
    this.setOf(b).add(a)
    return true
  }

  private setOf(address: string): Set<string> {
    let set = this.friends.get(address)
    if (set === undefined) {
      set = new Set()
      this.friends.set(address, set)
    }
    return set
  }
}

function parseLine(raw: string): [string, string] | string | undefined {
  let line = raw.trim()
  if (!line || line.startsWith("#")) return undefined
  let a: unknown
  let b: unknown
  if (line[0] === "[" || line[0] === "{") {
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch {
      return "invalid JSON"
    }
    if (Array.isArray(value) && value.length === 2) [a, b] = value
    else if (value !== null && typeof value === "object") ({ a, b } = value as { a: unknown; b: unknown })
    else return "expected a pair of addresses"
  } else {
    line = line.split("#", 1)[0]
    const parts = line.split(",").map((p) => p.trim())
    if (parts.length !== 2) return "expected two comma-separated addresses"
    ;[a, b] = parts
  }
  if (typeof a !== "string" || typeof b !== "string") return "addresses must be strings"
  const x = a.toLowerCase()
  const y = b.toLowerCase()
  if (!ADDRESS.test(x) || !ADDRESS.test(y)) return "not an address"
  if (x === y) return "a user cannot be their own friend"
  return [x, y]
}
