// The benchmark's TypeScript peer: presenced's PresenceService, served the way
// Decentraland's social service serves its RPC modules (the official @dcl/rpc
// server, ts-proto codegen, @dcl/crypto), over `ws`. Same rules, same limits,
// same defaults as `presenced serve`; see README.md.
//
//   node dist/index.js --port 8085 --admin-port 8086 [--offline-grace 5] ...

import { createServer } from "node:http"
import { parseArgs } from "node:util"

import { createRpcServer } from "@dcl/rpc"
import WebSocket, { WebSocketServer } from "ws"

import { Metrics, startAdmin } from "./admin"
import { AuthError, verifyLogin } from "./auth"
import { FriendGraph } from "./graph"
import { DEFAULT_ENGINE, EngineConfig, PresenceEngine } from "./presence"
import { registerPresenceService, Session } from "./service"
import { WsTransport, wsTransport } from "./transport"

const { values: opts } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "8085" },
    "admin-host": { type: "string", default: "127.0.0.1" },
    "admin-port": { type: "string", default: "8086" },
    ttl: { type: "string", default: String(DEFAULT_ENGINE.ttlMs / 1000) },
    "offline-grace": { type: "string", default: String(DEFAULT_ENGINE.offlineGraceMs / 1000) },
    "heartbeat-rate": { type: "string", default: String(DEFAULT_ENGINE.heartbeatRate) },
    "heartbeat-burst": { type: "string", default: String(DEFAULT_ENGINE.heartbeatBurst) },
    "auth-timeout": { type: "string", default: "30" },
    "auth-window": { type: "string", default: "300" },
    "max-frame-bytes": { type: "string", default: String(16 * 1024) },
    "ping-interval": { type: "string", default: "30" },
    "ping-timeout": { type: "string", default: "30" },
    "send-queue-bytes": { type: "string", default: String(256 * 1024) },
    "stuck-timeout": { type: "string", default: "60" },
  },
})

function number(name: keyof typeof opts): number {
  const value = Number(opts[name])
  if (!Number.isFinite(value) || value < 0) {
    process.stderr.write(`tspeer: --${name} must be a non-negative number\n`)
    process.exit(2)
  }
  return value
}

const engineConfig: EngineConfig = {
  ...DEFAULT_ENGINE,
  ttlMs: number("ttl") * 1000,
  offlineGraceMs: number("offline-grace") * 1000,
  heartbeatRate: number("heartbeat-rate"),
  heartbeatBurst: number("heartbeat-burst"),
}
const authTimeoutMs = number("auth-timeout") * 1000
const authWindowMs = number("auth-window") * 1000
const sendQueueBytes = number("send-queue-bytes")
const stuckTimeoutMs = number("stuck-timeout") * 1000
// As presenced: idle connections are pinged often enough never to reach the TTL.
const pingIntervalMs = Math.min(number("ping-interval") * 1000, engineConfig.ttlMs / 4)
const pingTimeoutMs = number("ping-timeout") * 1000
const KEEPALIVE_EVERY_MS = Math.min(pingIntervalMs / 2, 5000)
const TICK_EVERY_MS = 500

const graph = new FriendGraph()
const engine = new PresenceEngine(engineConfig, (address) => graph.friendsOf(address))
const metrics = new Metrics()
const rpcServer = createRpcServer<Session>({})
rpcServer.setHandler(async (port) => {
  registerPresenceService(port, engine, metrics)
})

/** One client connection: the login frame, then the RPC transport. */
class Connection {
  session: Session | undefined = undefined
  transport: WsTransport | undefined = undefined
  lastRx = Date.now()
  touchedRx = this.lastRx
  pingDeadline = 0
  private state: "login" | "verifying" | "ready" | "closed" = "login"
  // Frames that arrive while the login is being verified (Unity sends
  // CREATE_PORT right behind its login frame): handled after SERVER_READY.
  private early: Buffer[] = []
  private readonly authTimer: NodeJS.Timeout

  constructor(readonly socket: WebSocket) {
    this.authTimer = setTimeout(() => this.close(3004, "Authorization timeout", "auth-timeout"), authTimeoutMs)
    socket.on("message", (data: Buffer) => this.onMessage(data))
    socket.on("pong", () => {
      this.lastRx = Date.now()
      this.pingDeadline = 0
    })
    socket.on("close", () => this.onClose())
    // ws reports protocol violations (an oversized frame: it closes with 1009) here.
    socket.on("error", () => undefined)
  }

  private onMessage(data: Buffer): void {
    this.lastRx = Date.now()
    switch (this.state) {
      case "ready":
        this.transport!.receive(data)
        return
      case "login":
        this.state = "verifying"
        clearTimeout(this.authTimer)
        verifyLogin(data, Date.now(), authWindowMs).then(
          (address) => this.loggedIn(address),
          (err) => {
            const reason = err instanceof AuthError ? err.reason : "error"
            metrics.count(metrics.loginsFailed, reason)
            this.close(3003, `Unauthorized: ${err.message}`, "auth")
          },
        )
        return
      case "verifying":
        this.early.push(data)
        return
    }
  }

  private loggedIn(address: string): void {
    if (this.state === "closed") return
    metrics.loginsOk++
    const sessionId = nextSessionId++
    this.session = { sessionId, address, subscription: undefined }
    engine.openSession(sessionId, address, Date.now())
    connections.set(sessionId, this)
    this.transport = wsTransport(this.socket, sendQueueBytes, () =>
      this.close(1008, "slow consumer: send queue full", "slow-consumer"),
    )
    this.state = "ready"
    // Sends SERVER_READY.
    rpcServer.attachTransport(this.transport, this.session)
    const early = this.early
    this.early = []
    for (const frame of early) this.transport.receive(frame)
  }

  close(code: number, reason: string, cause: string): void {
    if (this.state === "closed") return
    metrics.count(metrics.disconnects, cause)
    this.socket.close(code, Buffer.from(reason).subarray(0, 123).toString())
    this.onClose()
  }

  private onClose(): void {
    if (this.state === "closed") return
    this.state = "closed"
    clearTimeout(this.authTimer)
    live.delete(this)
    if (this.session !== undefined) {
      connections.delete(this.session.sessionId)
      engine.closeSession(this.session.sessionId, Date.now())
    }
    this.transport?.closed()
  }

  /** Every few seconds: a sign of life for the engine, a ping if silent, the stuck check. */
  keepalive(now: number): void {
    const session = this.session!
    if (this.lastRx !== this.touchedRx) {
      this.touchedRx = this.lastRx
      engine.touch(session.sessionId, now)
    } else if (this.pingDeadline !== 0) {
      if (now >= this.pingDeadline) this.close(1011, "keepalive timeout", "ping-timeout")
      return
    } else if (now - this.lastRx >= pingIntervalMs) {
      this.pingDeadline = now + pingTimeoutMs
      this.socket.ping()
    }
    const subscription = session.subscription
    if (
      subscription !== undefined &&
      subscription.awaitingAckSince !== undefined &&
      subscription.pending.size > 0 &&
      now - subscription.awaitingAckSince > stuckTimeoutMs
    ) {
      this.close(1008, "slow consumer: stream not acknowledged", "slow-consumer")
    }
  }
}

let nextSessionId = 1
const connections = new Map<number, Connection>()
const live = new Set<Connection>()

const http = createServer()
const wss = new WebSocketServer({ server: http, maxPayload: number("max-frame-bytes") })
wss.on("connection", (socket) => {
  metrics.connectionsOpened++
  live.add(new Connection(socket))
})
// Same listen backlog as presenced.
http.listen({ host: opts.host, port: number("port"), backlog: 4096 }, () => {
  process.stdout.write(`tspeer listening on ws://${opts.host}:${number("port")}/\n`)
})

setInterval(() => {
  const now = Date.now()
  for (const conn of connections.values()) conn.keepalive(now)
}, KEEPALIVE_EVERY_MS)

setInterval(() => {
  for (const sessionId of engine.tick(Date.now())) {
    connections.get(sessionId)?.close(1011, "presence expired: no sign of life", "expired")
  }
}, TICK_EVERY_MS)

startAdmin(opts["admin-host"]!, number("admin-port"), engine, graph, metrics, engineConfig, () => live.size)

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    for (const conn of [...live]) conn.close(1001, "server shutting down", "shutdown")
    process.exit(0)
  })
}
