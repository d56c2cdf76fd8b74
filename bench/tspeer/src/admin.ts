// The subset of presenced's admin endpoint the benchmark drives: /readyz,
// /metrics (the same series names, so bench/suite reads both servers alike),
// /v1/status (the engine settings `presenced simulate` checks its pace
// against) and POST /v1/friendships/import (the graph seeding).

import { createServer, IncomingMessage, Server, ServerResponse } from "node:http"

import { FriendGraph } from "./graph"
import { EngineConfig, PresenceEngine } from "./presence"

const MAX_IMPORT_BYTES = 64 * 1024 * 1024

export class Metrics {
  loginsOk = 0
  loginsFailed = new Map<string, number>()
  updatesDelivered = 0
  streamItemsSent = 0
  connectionsOpened = 0
  disconnects = new Map<string, number>()

  count(map: Map<string, number>, key: string): void {
    map.set(key, (map.get(key) ?? 0) + 1)
  }
}

export function startAdmin(
  host: string,
  port: number,
  engine: PresenceEngine,
  graph: FriendGraph,
  metrics: Metrics,
  config: EngineConfig,
  connections: () => number,
): Server {
  const server = createServer((req, res) => {
    route(req, res).catch((err) => reply(res, 500, { error: String(err) }))
  })

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://admin")
    if (req.method === "GET" && (url.pathname === "/readyz" || url.pathname === "/healthz")) {
      return reply(res, 200, { ready: true, store: "memory" })
    }
    if (req.method === "GET" && url.pathname === "/metrics") {
      res.writeHead(200, { "Content-Type": "text/plain; version=0.0.4" })
      res.end(prometheus())
      return
    }
    if (req.method === "GET" && url.pathname === "/v1/status") {
      return reply(res, 200, {
        version: "tspeer",
        store: "memory",
        ready: true,
        now_ms: Date.now(),
        connections: connections(),
        sessions: engine.sessionCount,
        online_users: engine.onlineCount,
        engine: {
          ttl_ms: config.ttlMs,
          offline_grace_ms: config.offlineGraceMs,
          heartbeat_rate: config.heartbeatRate,
          heartbeat_burst: config.heartbeatBurst,
          realm_max_bytes: config.realmMaxBytes,
          bounds: { min_x: config.minX, min_y: config.minY, max_x: config.maxX, max_y: config.maxY },
        },
      })
    }
    if (req.method === "POST" && url.pathname === "/v1/friendships/import") {
      const body = await readBody(req)
      const result = graph.importLines(body)
      if (result.errors.length) {
        return reply(res, 400, { error: `${result.errors.length} malformed lines; nothing was imported`, errors: result.errors.slice(0, 20) })
      }
      const { errors: _, ...counts } = result
      return reply(res, 200, { ...counts, duplicates: 0 })
    }
    reply(res, 404, { error: "not found" })
  }

  function prometheus(): string {
    const s = engine.stats
    const lines = [
      `presenced_heartbeats_total{reason="",result="accepted"} ${s.heartbeatsAccepted}`,
      `presenced_heartbeats_total{reason="rate",result="rejected"} ${s.heartbeatsRejectedRate}`,
      `presenced_heartbeats_total{reason="invalid",result="rejected"} ${s.heartbeatsRejectedInvalid}`,
      `presenced_updates_delivered_total ${metrics.updatesDelivered}`,
      `presenced_stream_items_sent_total ${metrics.streamItemsSent}`,
      `presenced_logins_total{reason="",result="ok"} ${metrics.loginsOk}`,
      ...[...metrics.loginsFailed].map(([reason, n]) => `presenced_logins_total{reason="${reason}",result="failed"} ${n}`),
      ...[...metrics.disconnects].map(([cause, n]) => `presenced_disconnects_total{cause="${cause}"} ${n}`),
      `presenced_connections_opened_total ${metrics.connectionsOpened}`,
      `presenced_sessions ${engine.sessionCount}`,
      `presenced_online_users ${engine.onlineCount}`,
      `presenced_went_offline_total ${s.wentOffline}`,
      `presenced_expired_total ${s.expired}`,
    ]
    return lines.join("\n") + "\n"
  }

  server.listen(port, host)
  return server
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "Content-Type": "application/json" })
  res.end(JSON.stringify(body))
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_IMPORT_BYTES) throw new Error("request body too large")
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString("utf8")
}
