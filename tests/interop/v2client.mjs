#!/usr/bin/env node
// Interop client for the SocialService v2 module: the real npm @dcl/rpc 1.1.2 client with
// @dcl/protocol's own SocialServiceDefinition (ts-proto generated, the package's code, not a
// copy), logged in with @dcl/crypto, connecting in the frame order of a real explorer.
//
//   node v2client.mjs --url ws://127.0.0.1:8085/ --order unity|godot [options]
//
// Prints one JSON object per line on stdout ({"event": ...}); the last line is
// {"event":"done"} on success or {"event":"error","message":...} (exit code 1).
//
// Frame orders:
//   unity  the login JSON as a *text* frame and CREATE_PORT "social_service" in the same TCP
//          write (the socket is corked), before SERVER_READY can arrive; REQUEST_MODULE as soon
//          as the port answer comes (Unity's RPCSocialServices).
//   godot  the login JSON as a *binary* frame, then wait for SERVER_READY (the Rust dcl-rpc
//          client requires it as the first frame), then CREATE_PORT "SocialService".
//
// Options:
//   --owner-key 0x<64 hex>   owner wallet key (default: a fresh one)
//   --friend ADDRESS         wait on SubscribeToFriendConnectivityUpdates until this friend is
//                            seen ONLINE and then OFFLINE, then cancel the stream
//   --timeout ms             overall deadline (default 15000)
//
// Steps: login -> port -> module (every procedure name printed) -> GetFriends pages
// (limit 1, then the rest) -> GetFriendshipStatus -> refused calls (a response error case, a
// stream's RemoteError) -> a duplicate subscription (the first iterator must end) ->
// {"event":"subscribed"} -> every FriendConnectivityUpdate printed -> unary call after the
// cancel -> close 1000.

import net from "node:net"
import { parseArgs } from "node:util"

import protocol from "@dcl/protocol/out-js/decentraland/social_service/v2/social_service_v2.gen.js"
import { createRpcClient } from "@dcl/rpc"
import { loadService } from "@dcl/rpc/dist/codegen.js"
import { WebSocketTransport } from "@dcl/rpc/dist/transports/WebSocket.js"
import WebSocket from "ws"

import { login, signedFetchHeaders } from "./auth.mjs"

const { SocialServiceDefinition, connectivityStatusToJSON, friendshipStatusToJSON } = protocol

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    order: { type: "string", default: "unity" },
    "owner-key": { type: "string" },
    friend: { type: "string" },
    timeout: { type: "string", default: "15000" },
  },
})

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n")
}

function fail(message) {
  emit("error", { message })
  process.exit(1)
}

if (!opts.url) fail("--url is required")
if (!["unity", "godot"].includes(opts.order)) fail(`unknown --order ${opts.order}`)
const deadline = setTimeout(() => fail(`timed out after ${opts.timeout} ms`), Number(opts.timeout))

const { owner, authIdentity } = await login(opts["owner-key"])
const loginJson = JSON.stringify(signedFetchHeaders(authIdentity, "get", "/", {}))
emit("identity", { address: owner.address.toLowerCase() })

const SERVER_READY = "0d00000058"

// ---------------------------------------------------------------- connection, in client order

async function openSocket() {
  // ws's public `createConnection` option hands us the TCP socket, so the Unity burst can be
  // made one write (cork) rather than left to timing.
  let tcp
  const ws = new WebSocket(opts.url, {
    createConnection: (options) => (tcp = net.connect(options)),
  })
  const closed = new Promise((res) => ws.on("close", (code, reason) => res({ code, reason: reason.toString() })))
  await new Promise((res, rej) => {
    ws.once("open", res)
    ws.once("error", rej)
  })
  return { ws, tcp, closed }
}

async function connectUnity() {
  const { ws, tcp, closed } = await openSocket()
  let serverReadySeen = false
  ws.on("message", (data) => {
    if (!serverReadySeen && Buffer.from(data).toString("hex") === SERVER_READY) serverReadySeen = true
  })
  tcp.cork()
  ws.send(loginJson, { binary: false }) // Unity sends the login as a text frame
  const client = await createRpcClient(WebSocketTransport(ws))
  const portPromise = client.createPort("social_service") // CREATE_PORT, queued behind it
  const sentBeforeReady = !serverReadySeen
  tcp.uncork() // both frames leave in one write
  emit("burst_sent", { frames: ["login(text)", "CREATE_PORT"], beforeServerReady: sentBeforeReady })
  const port = await portPromise
  return { ws, closed, port }
}

async function connectGodot() {
  const { ws, closed } = await openSocket()
  ws.send(new TextEncoder().encode(loginJson), { binary: true }) // Godot: a binary frame
  const first = await new Promise((res) => ws.once("message", (data) => res(Buffer.from(data).toString("hex"))))
  if (first !== SERVER_READY) fail(`first frame after login is ${first}, not SERVER_READY`)
  emit("server_ready")
  const client = await createRpcClient(WebSocketTransport(ws))
  const port = await client.createPort("SocialService")
  return { ws, closed, port }
}

// ---------------------------------------------------------------- the scenario

function within(promise, ms, what) {
  return Promise.race([promise, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what} hung`)), ms))])
}

const errorMessage = (promise) =>
  promise.then(
    () => null,
    (err) => err.message,
  )

const friendRows = (response) => ({
  addresses: response.friends.map((f) => f.address),
  names: response.friends.map((f) => f.name),
  total: response.paginationData?.total,
  page: response.paginationData?.page,
})

async function main() {
  const { ws, closed, port } = opts.order === "unity" ? await connectUnity() : await connectGodot()
  // Unity asks for the module as soon as the port answer comes.
  const raw = await port.loadModule("SocialService")
  emit("module", { portId: port.portId, procedures: Object.keys(raw) })
  const social = loadService(port, SocialServiceDefinition)

  const firstPage = await social.getFriends({ pagination: { limit: 1, offset: 0 } })
  const rest = await social.getFriends({ pagination: { limit: 1000, offset: 1 } })
  const whole = await social.getFriends({})
  emit("friends", { first: friendRows(firstPage), rest: friendRows(rest), whole: friendRows(whole) })

  if (opts.friend) {
    const status = await social.getFriendshipStatus({ user: { address: opts.friend.toUpperCase().replace("0X", "0x") } })
    emit("friendship_status", {
      case: status.response?.$case,
      status: friendshipStatusToJSON(status.response?.accepted?.status),
    })
  }

  const settings = await social.getSocialSettings({})
  emit("refused_unary", { case: settings.response?.$case, message: settings.response?.internalServerError?.message })
  const voice = await errorMessage(
    (async () => {
      for await (const _ of social.subscribeToPrivateVoiceChatUpdates({})) break
    })(),
  )
  emit("refused_stream", { error: voice })

  // A duplicate subscription (Godot once re-subscribed every 30 s on the same connection):
  // the older stream ends, normally.
  const older = social.subscribeToFriendConnectivityUpdates({})
  const olderNext = older.next() // REQUEST #n
  const updates = social.subscribeToFriendConnectivityUpdates({})
  const first = updates.next() // REQUEST #n+1, right behind it
  const olderEnd = await within(
    olderNext.then(async (r) => {
      let items = r.done ? 0 : 1
      while (!(await older.next()).done) items++
      return `ended after ${items} items`
    }, (err) => `error: ${err.message}`),
    5000,
    "the older subscription",
  )
  emit("duplicate", { older: olderEnd })
  emit("subscribed")

  const wanted = opts.friend?.toLowerCase()
  const seen = []
  let next = first
  while (wanted) {
    const { value, done } = await next
    if (done) fail("the subscription ended")
    const update = { address: value.friend?.address, name: value.friend?.name, status: connectivityStatusToJSON(value.status) }
    emit("update", update)
    if (update.address === wanted) seen.push(update.status)
    if (seen.includes("ONLINE") && seen.at(-1) === "OFFLINE") break
    next = updates.next()
  }
  await updates.return() // client cancel: STREAM_MESSAGE closed

  const again = await social.getFriends({ pagination: { limit: 1, offset: 0 } })
  emit("after_cancel", friendRows(again))
  port.close()
  ws.close(1000, "bye")
  emit("closed", await closed)
}

try {
  await main()
  clearTimeout(deadline)
  emit("done")
  process.exit(0)
} catch (err) {
  fail(String(err?.stack ?? err))
}
