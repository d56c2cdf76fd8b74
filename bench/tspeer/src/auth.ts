// The login frame: signed-fetch headers of `get /` as JSON, verified with
// @dcl/crypto the way @dcl/crypto-middleware's verify() does for the social
// service, with presenced's limits (timestamp window both ways, at most 8
// links, no kernel-scene signer).

import { Authenticator } from "@dcl/crypto"
import type { AuthChain, AuthLink } from "@dcl/crypto"

const CHAIN_PREFIX = "x-identity-auth-chain-"
const TIMESTAMP = "x-identity-timestamp"
const METADATA = "x-identity-metadata"
const MAX_CHAIN_LINKS = 8
const FORBIDDEN_SIGNERS = new Set(["decentraland-kernel-scene"])

export class AuthError extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message)
  }
}

/** The lower-cased address the frame logs in, or an AuthError. */
export async function verifyLogin(frame: Buffer | string, nowMs: number, windowMs: number): Promise<string> {
  let headers: Record<string, unknown>
  try {
    headers = JSON.parse(typeof frame === "string" ? frame : frame.toString("utf8"))
  } catch {
    throw new AuthError("bad-json", "the login frame is not UTF-8 JSON")
  }
  if (headers === null || typeof headers !== "object" || Array.isArray(headers)) {
    throw new AuthError("bad-json", "the login frame must be a JSON object of headers")
  }
  const chain: AuthChain = []
  for (let i = 0; ; i++) {
    const raw = headers[CHAIN_PREFIX + i]
    if (raw === undefined) break
    if (i >= MAX_CHAIN_LINKS) throw new AuthError("chain-too-long", `auth chain has more than ${MAX_CHAIN_LINKS} links`)
    if (typeof raw !== "string") throw new AuthError("bad-link", `${CHAIN_PREFIX}${i} must be a string`)
    try {
      chain.push(JSON.parse(raw) as AuthLink)
    } catch {
      throw new AuthError("bad-link", `link ${i} is not JSON`)
    }
  }
  if (chain.length < 2) throw new AuthError("chain-too-short", "an auth chain needs at least 2 links")
  const rawMetadata = headers[METADATA] ?? ""
  if (typeof rawMetadata !== "string") throw new AuthError("bad-metadata", `${METADATA} must be a string`)
  let metadata: unknown
  try {
    metadata = JSON.parse(rawMetadata || "{}")
  } catch {
    throw new AuthError("bad-metadata", `${METADATA} is not JSON`)
  }
  if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
    throw new AuthError("bad-metadata", `${METADATA} must be a JSON object`)
  }
  const signer = (metadata as Record<string, unknown>).signer
  if (typeof signer === "string" && FORBIDDEN_SIGNERS.has(signer)) {
    throw new AuthError("forbidden-signer", `signer ${signer} may not open a session`)
  }
  const rawTimestamp = headers[TIMESTAMP]
  if (typeof rawTimestamp !== "string" || !/^\d{1,16}$/.test(rawTimestamp)) {
    throw new AuthError("bad-timestamp", `${TIMESTAMP} must be Unix milliseconds`)
  }
  const timestamp = Number(rawTimestamp)
  if (timestamp < nowMs - windowMs || timestamp > nowMs + windowMs) {
    throw new AuthError("timestamp-out-of-window", `timestamp ${timestamp} is more than ${windowMs} ms away from now`)
  }
  const payload = `get:/:${rawTimestamp}:${rawMetadata}`
  const result = await Authenticator.validateSignature(payload, chain, null, nowMs)
  if (!result.ok) throw new AuthError("bad-signature", result.message ?? "invalid auth chain")
  return Authenticator.ownerAddress(chain).toLowerCase()
}
