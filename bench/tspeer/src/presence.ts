// Who is online and who must be told what: presenced's engine rules, the
// idiomatic Node way (Maps in insertion order, objects shared by reference).
// No sockets here; every method takes the time in Unix milliseconds.
//
// The rules are presenced's (presenced/engine/engine.py), because the
// benchmark compares the cost of the same work:
// - a user is online from login until the offline grace after their last
//   connection closed, or until the TTL passes without a sign of life;
// - a PositionHeartbeat passes a per-connection token bucket, then the
//   position is validated; a move tells every subscribed friend;
// - a subscription starts with the friends online now, then receives
//   changes, coalesced per friend while the client has not acknowledged the
//   previous stream item (see Subscription).

import { Position, PresenceStatus, UserPresence } from "./gen/presenced/v1/presence"

export type EngineConfig = {
  ttlMs: number
  offlineGraceMs: number
  heartbeatRate: number
  heartbeatBurst: number
  realmMaxBytes: number
  minX: number
  maxX: number
  minY: number
  maxY: number
}

export const DEFAULT_ENGINE: EngineConfig = {
  ttlMs: 120_000,
  offlineGraceMs: 5_000,
  heartbeatRate: 1,
  heartbeatBurst: 2,
  realmMaxBytes: 128,
  minX: -1000,
  maxX: 1000,
  minY: -1000,
  maxY: 1000,
}

// Users per stream item, as presenced batches them.
export const BATCH_SIZE = 100

export type HeartbeatOutcome =
  | { kind: "accepted"; position: Position }
  | { kind: "bad-request"; message: string }
  | { kind: "too-many-requests"; message: string; retryAfterMs: number }

/** Pending updates of one subscription stream, coalesced per friend. */
export class Subscription {
  // Friend address -> their latest state not yet sent (insertion order: oldest first).
  readonly pending = new Map<string, UserPresence>()
  closed = false
  // Since when an item has been out without the client's ACK (the @dcl/rpc
  // server only asks the generator for the next item once it is acked).
  awaitingAckSince: number | undefined = undefined
  private wake: (() => void) | undefined = undefined

  put(update: UserPresence): void {
    this.pending.set(update.address, update)
    this.signal()
  }

  close(): void {
    this.closed = true
    this.signal()
  }

  private signal(): void {
    const wake = this.wake
    if (wake !== undefined) {
      this.wake = undefined
      wake()
    }
  }

  /** Up to BATCH_SIZE pending updates, oldest first; waits while there are none. */
  async next(): Promise<UserPresence[] | undefined> {
    while (!this.closed && this.pending.size === 0) {
      await new Promise<void>((resolve) => (this.wake = resolve))
    }
    if (this.closed) return undefined
    const batch: UserPresence[] = []
    for (const [address, update] of this.pending) {
      batch.push(update)
      this.pending.delete(address)
      if (batch.length === BATCH_SIZE) break
    }
    return batch
  }
}

class Session {
  tokens: number
  tokensAtMs: number
  subscription: Subscription | undefined = undefined
  constructor(
    readonly id: number,
    readonly user: User,
    tokens: number,
    nowMs: number,
  ) {
    this.tokens = tokens
    this.tokensAtMs = nowMs
  }
}

class User {
  online = false
  position: Position | undefined = undefined
  lastSeenMs: number
  readonly sessions = new Map<number, Session>()
  // Known while the user has a connection here.
  friends: ReadonlySet<string> | undefined = undefined
  constructor(readonly address: string, nowMs: number) {
    this.lastSeenMs = nowMs
  }

  snapshot(): UserPresence {
    return {
      address: this.address,
      status: this.online ? PresenceStatus.ONLINE : PresenceStatus.OFFLINE,
      position: this.online ? this.position : undefined,
      lastSeenMs: this.lastSeenMs,
    }
  }
}

export type EngineStats = {
  heartbeatsAccepted: number
  heartbeatsRejectedRate: number
  heartbeatsRejectedInvalid: number
  wentOnline: number
  wentOffline: number
  expired: number
}

const NO_FRIENDS: ReadonlySet<string> = new Set()

export class PresenceEngine {
  readonly stats: EngineStats = {
    heartbeatsAccepted: 0,
    heartbeatsRejectedRate: 0,
    heartbeatsRejectedInvalid: 0,
    wentOnline: 0,
    wentOffline: 0,
    expired: 0,
  }
  private readonly users = new Map<string, User>()
  private readonly sessions = new Map<number, Session>()
  // Online users by last sign of life, oldest first (re-inserted on refresh).
  private readonly owned = new Map<string, number>()
  // Users whose last connection closed, by grace deadline, earliest first.
  private readonly grace = new Map<string, number>()
  // Friend address -> subscriptions of their friends.
  private readonly watchers = new Map<string, Set<Subscription>>()

  constructor(
    readonly config: EngineConfig,
    private readonly friendsOf: (address: string) => ReadonlySet<string>,
  ) {}

  get sessionCount(): number {
    return this.sessions.size
  }

  get onlineCount(): number {
    return this.owned.size
  }

  openSession(sessionId: number, address: string, nowMs: number): void {
    let user = this.users.get(address)
    if (user === undefined) {
      user = new User(address, nowMs)
      this.users.set(address, user)
    }
    if (user.sessions.size === 0) user.friends = this.friendsOf(address)
    const session = new Session(sessionId, user, this.config.heartbeatBurst, nowMs)
    user.sessions.set(sessionId, session)
    this.sessions.set(sessionId, session)
    // A reconnect inside the grace period is invisible to friends.
    this.grace.delete(address)
    this.vouch(user, nowMs, false)
  }

  closeSession(sessionId: number, nowMs: number): void {
    const session = this.sessions.get(sessionId)
    if (session === undefined) return
    this.sessions.delete(sessionId)
    const user = session.user
    user.sessions.delete(sessionId)
    if (session.subscription !== undefined) this.dropSubscription(session.subscription, user)
    if (user.sessions.size > 0) return
    if (this.owned.has(user.address)) {
      this.grace.delete(user.address)
      this.grace.set(user.address, nowMs + this.config.offlineGraceMs)
    } else if (!user.online) {
      this.users.delete(user.address)
    }
  }

  /** Any sign of life other than a heartbeat (a frame, a pong). */
  touch(sessionId: number, nowMs: number): void {
    const session = this.sessions.get(sessionId)
    if (session === undefined) return
    const user = session.user
    if (this.owned.has(user.address)) {
      user.lastSeenMs = nowMs
      this.owned.delete(user.address)
      this.owned.set(user.address, nowMs)
    }
  }

  heartbeat(sessionId: number, position: Position, nowMs: number): HeartbeatOutcome {
    const session = this.sessions.get(sessionId)
    if (session === undefined) return { kind: "bad-request", message: "not logged in" }
    const config = this.config
    const tokens = Math.min(
      config.heartbeatBurst,
      session.tokens + ((nowMs - session.tokensAtMs) * config.heartbeatRate) / 1000,
    )
    session.tokensAtMs = nowMs
    if (tokens < 1) {
      session.tokens = tokens
      this.stats.heartbeatsRejectedRate++
      return {
        kind: "too-many-requests",
        message: `at most ${config.heartbeatRate} heartbeats per second`,
        retryAfterMs: Math.ceil(((1 - tokens) * 1000) / config.heartbeatRate),
      }
    }
    session.tokens = tokens - 1
    const error = this.validatePosition(position)
    if (error !== undefined) {
      this.stats.heartbeatsRejectedInvalid++
      return { kind: "bad-request", message: error }
    }
    this.stats.heartbeatsAccepted++
    const user = session.user
    const old = user.position
    const moved = old === undefined || old.realm !== position.realm || old.x !== position.x || old.y !== position.y
    user.position = { realm: position.realm, x: position.x, y: position.y }
    this.vouch(user, nowMs, moved)
    return { kind: "accepted", position: user.position }
  }

  validatePosition(position: Position): string | undefined {
    const c = this.config
    if (!position.realm) return "realm must not be empty"
    if (Buffer.byteLength(position.realm) > c.realmMaxBytes) return `realm longer than ${c.realmMaxBytes} bytes`
    if (position.x < c.minX || position.x > c.maxX) return `x outside [${c.minX}, ${c.maxX}]`
    if (position.y < c.minY || position.y > c.maxY) return `y outside [${c.minY}, ${c.maxY}]`
    return undefined
  }

  /** The online friends of a session's user, sorted by address. */
  onlineFriends(sessionId: number): UserPresence[] {
    const session = this.sessions.get(sessionId)
    if (session === undefined) return []
    const found: UserPresence[] = []
    for (const friend of session.user.friends ?? NO_FRIENDS) {
      const other = this.users.get(friend)
      if (other !== undefined && other.online) found.push(other.snapshot())
    }
    found.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0))
    return found
  }

  /** A new subscription, pre-filled with the friends online now; replaces the session's previous one. */
  subscribe(sessionId: number): Subscription {
    const session = this.sessions.get(sessionId)
    const subscription = new Subscription()
    if (session === undefined) {
      subscription.close()
      return subscription
    }
    const user = session.user
    if (session.subscription !== undefined) this.dropSubscription(session.subscription, user)
    session.subscription = subscription
    for (const friend of user.friends ?? NO_FRIENDS) {
      let boxes = this.watchers.get(friend)
      if (boxes === undefined) {
        boxes = new Set()
        this.watchers.set(friend, boxes)
      }
      boxes.add(subscription)
      const other = this.users.get(friend)
      if (other !== undefined && other.online) subscription.put(other.snapshot())
    }
    return subscription
  }

  unsubscribe(sessionId: number, subscription: Subscription): void {
    const session = this.sessions.get(sessionId)
    if (session !== undefined && session.subscription === subscription) {
      this.dropSubscription(subscription, session.user)
    }
  }

  /** Offline grace and TTL expiry; returns the sessions whose user expired while connected. */
  tick(nowMs: number): number[] {
    for (const [address, deadline] of this.grace) {
      if (deadline > nowMs) break
      this.grace.delete(address)
      const user = this.users.get(address)
      if (user !== undefined && user.sessions.size === 0) this.release(user)
    }
    const toClose: number[] = []
    const cutoff = nowMs - this.config.ttlMs
    for (const [address, seen] of this.owned) {
      if (seen > cutoff) break
      const user = this.users.get(address)!
      this.stats.expired++
      for (const id of user.sessions.keys()) toClose.push(id)
      this.release(user)
    }
    return toClose
  }

  private vouch(user: User, nowMs: number, changed: boolean): void {
    user.lastSeenMs = nowMs
    this.owned.delete(user.address)
    this.owned.set(user.address, nowMs)
    if (!user.online) {
      user.online = true
      this.stats.wentOnline++
      changed = true
    }
    if (changed) this.notify(user)
  }

  private release(user: User): void {
    this.owned.delete(user.address)
    this.grace.delete(user.address)
    if (user.online) {
      user.online = false
      this.stats.wentOffline++
      this.notify(user)
    }
    if (user.sessions.size === 0) this.users.delete(user.address)
  }

  private notify(user: User): void {
    const boxes = this.watchers.get(user.address)
    if (boxes === undefined || boxes.size === 0) return
    // One snapshot object for every recipient; each stream encodes it itself.
    const update = user.snapshot()
    for (const box of boxes) box.put(update)
  }

  private dropSubscription(subscription: Subscription, user: User): void {
    for (const session of user.sessions.values()) {
      if (session.subscription === subscription) session.subscription = undefined
    }
    for (const friend of user.friends ?? NO_FRIENDS) {
      const boxes = this.watchers.get(friend)
      if (boxes !== undefined) {
        boxes.delete(subscription)
        if (boxes.size === 0) this.watchers.delete(friend)
      }
    }
    subscription.close()
  }
}
