#!/usr/bin/env node
// Interop client: drives a running `presenced serve` with the real npm packages
// (@dcl/rpc 1.1.2 client + WebSocket transport, @dcl/crypto AuthChain, ws), the
// way a TypeScript explorer or the social-service integration tests do.
//
//   node client.mjs --url ws://127.0.0.1:8085/ [options]
//
// Prints one JSON object per line on stdout ({"event": ...}); the last line is
// {"event":"done"} on success or {"event":"error","message":...} (exit code 1).
//
// Options:
//   --scenario presence|errors|bad-signature   (default presence)
//   --owner-key 0x<64 hex>   owner wallet key; default: a fresh @dcl/crypto createUnsafeIdentity()
//   --auth-frame binary|text how the login frame is sent (default binary, like the ea tests and
//                            Godot; Unity sends text)
//   --heartbeat realm,x,y    position sent with PositionHeartbeat (default main,0,0)
//   --wait-for address,realm,x,y
//                            presence scenario: keep reading the subscription until an update
//                            shows this user ONLINE at this position, then cancel it
//   --rounds N               errors scenario: repetitions of the timing-sensitive steps (default 20)
//   --timeout ms             overall deadline (default 10000)
//   --proto PATH             presence.proto (default: the repository's proto/presenced/v1/)
//
// presence scenario: identity -> login -> CREATE_PORT -> REQUEST_MODULE -> PositionHeartbeat
// -> GetOnlineFriends (whole stream) -> SubscribeFriendshipPresenceUpdates (every item printed
// as {"event":"update"} until --wait-for matches; then the iterator is returned, which makes
// @dcl/rpc send its cancel) -> DESTROY_PORT -> close 1000.
// errors scenario: how errors look to the real client: an unknown module, an invalid unary
// payload (RemoteError), a typed bad_request; then, --rounds times each, a stream the server
// ends right after its offer: GetOnlineFriends with an invalid payload (the iterator must throw
// the RemoteError) and a subscription taken over by a second one sent right behind it (the first
// iterator must end). A step that hangs is reported as "hung" rather than waited for.
// bad-signature scenario: the last link is signed by a key that is not the ephemeral key; the
// client still starts the RPC session and reports how the socket closed.

import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"

import { Authenticator } from "@dcl/crypto"
import { createUnsafeIdentity } from "@dcl/crypto/dist/crypto.js"
import { createRpcClient } from "@dcl/rpc"
import { loadService } from "@dcl/rpc/dist/codegen.js"
import { WebSocketTransport } from "@dcl/rpc/dist/transports/WebSocket.js"
import protobuf from "protobufjs"
import WebSocket from "ws"

import { login, signedFetchHeaders } from "./auth.mjs"

const here = dirname(fileURLToPath(import.meta.url))

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    scenario: { type: "string", default: "presence" },
    "owner-key": { type: "string" },
    "auth-frame": { type: "string", default: "binary" },
    heartbeat: { type: "string", default: "main,0,0" },
    "wait-for": { type: "string" },
    rounds: { type: "string", default: "20" },
    timeout: { type: "string", default: "10000" },
    proto: { type: "string", default: resolve(here, "../../proto/presenced/v1/presence.proto") },
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
const deadline = setTimeout(() => fail(`timed out after ${opts.timeout} ms`), Number(opts.timeout))

// ---------------------------------------------------------------- identity (@dcl/crypto)

const { owner, ephemeral, authIdentity } = await login(opts["owner-key"])

const headers = signedFetchHeaders(authIdentity, "get", "/", {})
if (opts.scenario === "bad-signature") {
  // A well-formed signature of the right payload, made by a key the chain never delegated to.
  const link = JSON.parse(headers["x-identity-auth-chain-2"])
  link.signature = Authenticator.createSignature(createUnsafeIdentity(), link.payload)
  headers["x-identity-auth-chain-2"] = JSON.stringify(link)
}
emit("identity", { address: owner.address, ephemeral: ephemeral.address })

// ---------------------------------------------------------------- presence.proto -> ts-proto shape

function messageType(type) {
  // The interface @dcl/rpc's codegen expects of a ts-proto message (encode/decode/fromJSON).
  return {
    encode: (message, writer) => type.encode(type.fromObject(message), writer),
    decode: (input, length) => type.decode(input, length),
    fromJSON: (object) => type.fromObject(object),
  }
}

function serviceDefinition(root, fullName) {
  // Equivalent of ts-proto's `outputServices=generic-definitions` output, built at runtime.
  const service = root.lookupService(fullName).resolveAll()
  const methods = {}
  for (const method of service.methodsArray) {
    methods[method.name[0].toLowerCase() + method.name.slice(1)] = {
      name: method.name,
      requestType: messageType(method.resolvedRequestType),
      requestStream: Boolean(method.requestStream),
      responseType: messageType(method.resolvedResponseType),
      responseStream: Boolean(method.responseStream),
      options: {},
    }
  }
  return { name: service.name, fullName, methods }
}

// keepCase: print the .proto field names (last_seen_ms, too_many_requests, ...).
const root = new protobuf.Root().loadSync(opts.proto, { keepCase: true })
const PresenceServiceDefinition = serviceDefinition(root, "presenced.v1.PresenceService")
const asJson = (message) =>
  message.$type.toObject(message, { longs: Number, enums: String, defaults: true, oneofs: true })
const users = (list) => list.map((u) => u.$type.toObject(u, { longs: Number, enums: String, defaults: true }))

// ---------------------------------------------------------------- connection

async function connect() {
  const ws = new WebSocket(opts.url)
  const closed = new Promise((res) => ws.on("close", (code, reason) => res({ code, reason: reason.toString() })))
  await new Promise((res, rej) => {
    ws.once("open", res)
    ws.once("error", rej)
  })
  // Login: the first frame is the JSON of the signed-fetch headers.
  const text = JSON.stringify(headers)
  ws.send(opts["auth-frame"] === "text" ? text : new TextEncoder().encode(text), {
    binary: opts["auth-frame"] !== "text",
  })
  emit("login_sent", { frame: opts["auth-frame"] })
  const transport = WebSocketTransport(ws)
  const client = await createRpcClient(transport)
  return { ws, closed, client }
}

async function presenceScenario() {
  const { ws, closed, client } = await connect()
  const port = await client.createPort("presenced-interop")
  const procedures = Object.keys(await port.loadModule("PresenceService"))
  emit("module", { portId: port.portId, procedures })
  const presence = loadService(port, PresenceServiceDefinition)

  const [realm, x, y] = opts.heartbeat.split(",")
  const heartbeat = await presence.positionHeartbeat({ position: { realm, x: Number(x), y: Number(y) } })
  emit("heartbeat", { response: asJson(heartbeat) })

  const online = []
  for await (const batch of presence.getOnlineFriends({})) online.push(...users(batch.users))
  emit("online_friends", { users: online })

  const [wAddress, wRealm, wX, wY] = (opts["wait-for"] ?? "").split(",")
  const matches = (u) =>
    u.address === wAddress?.toLowerCase() &&
    u.status === "ONLINE" &&
    u.position?.realm === wRealm &&
    u.position?.x === Number(wX) &&
    u.position?.y === Number(wY)
  let seen = false
  for await (const batch of presence.subscribeFriendshipPresenceUpdates({})) {
    const updates = users(batch.updates)
    emit("update", { updates })
    if (opts["wait-for"] === undefined || updates.some(matches)) {
      seen = true
      break // returns the iterator: @dcl/rpc sends STREAM_MESSAGE closed (client cancel)
    }
  }
  emit("subscription_closed", { matched: seen })
  if (!seen) fail("the subscription ended before the expected update")

  // The connection is still usable after the cancel: one more unary call.
  const again = await presence.positionHeartbeat({ position: { realm, x: Number(x), y: Number(y) } })
  emit("heartbeat_after_cancel", { response: asJson(again) })

  port.close() // DESTROY_PORT
  ws.close(1000, "bye")
  emit("closed", await closed)
}

function within(promise, ms) {
  return Promise.race([promise, new Promise((_, rej) => setTimeout(() => rej(new Error("hung")), ms))])
}

async function drain(iterable) {
  const items = []
  for await (const item of iterable) items.push(item)
  return items
}

const errorMessage = (promise) =>
  promise.then(
    () => null,
    (err) => err.message,
  )

async function errorsScenario() {
  const { ws, closed, client } = await connect()
  const port = await client.createPort("presenced-interop")
  emit("unknown_module", { error: await errorMessage(port.loadModule("NoSuchModule")) })
  const raw = await port.loadModule("PresenceService") // procedures taking and giving bytes
  const presence = loadService(port, PresenceServiceDefinition)
  const garbage = Uint8Array.of(0xff, 0xff) // not protobuf: field 31, wire type 7
  emit("invalid_unary_payload", { error: await errorMessage(raw.PositionHeartbeat(garbage)) })
  const badRequest = await presence.positionHeartbeat({ position: { realm: "", x: 0, y: 0 } })
  emit("bad_request", { response: asJson(badRequest) })

  const rounds = Number(opts.rounds)
  const streamErrors = new Set()
  for (let i = 0; i < rounds; i++) {
    const iterator = await raw.GetOnlineFriends(garbage) // resolves on the offer
    streamErrors.add(await errorMessage(within(drain(iterator), 2000)))
  }
  emit("invalid_stream_payload", { rounds, errors: [...streamErrors] })

  const takeovers = new Set()
  for (let i = 0; i < rounds; i++) {
    const first = presence.subscribeFriendshipPresenceUpdates({})
    const second = presence.subscribeFriendshipPresenceUpdates({})
    const firstItems = drain(first) // first.next(): REQUEST #n
    const secondNext = second.next() // REQUEST #n+1, right behind it
    takeovers.add(
      await within(firstItems, 2000).then(
        (items) => `ended after ${items.length} items`,
        (err) => err.message,
      ),
    )
    await second.return() // client cancel
    await secondNext
  }
  emit("takeover", { rounds, first: [...takeovers] })

  const after = await presence.positionHeartbeat({ position: { realm: "main", x: 1, y: 1 } })
  emit("heartbeat", { response: asJson(after) })
  ws.close(1000, "bye")
  emit("closed", await closed)
}

async function badSignatureScenario() {
  const { closed, client } = await connect()
  // A real client fires CREATE_PORT right after the login; it must fail, not hang.
  const attempt = client.createPort("presenced-interop").then(
    () => ({ ok: true }),
    (err) => ({ ok: false, error: String(err.message ?? err) }),
  )
  const { code, reason } = await closed
  emit("closed", { code, reason, createPort: await attempt })
}

try {
  if (opts.scenario === "presence") await presenceScenario()
  else if (opts.scenario === "errors") await errorsScenario()
  else if (opts.scenario === "bad-signature") await badSignatureScenario()
  else fail(`unknown scenario ${opts.scenario}`)
  clearTimeout(deadline)
  emit("done")
  process.exit(0)
} catch (err) {
  fail(String(err?.stack ?? err))
}
