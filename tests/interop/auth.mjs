// Login as an explorer does it, with the real @dcl/crypto: an owner wallet delegates to an
// ephemeral key (AuthChain), which signs the signed-fetch payload "get:/:<ts>:{}". The JSON of
// those headers is the WebSocket's first frame.

import { createECDH } from "node:crypto"

import { Authenticator } from "@dcl/crypto"
import { computeAddress, createUnsafeIdentity } from "@dcl/crypto/dist/crypto.js"

export function identityFromKey(privateKeyHex) {
  // An owner wallet with a known key, so the test can put its address in the friends file.
  // Same shape as createUnsafeIdentity(): unprefixed hex keys, checksummed address.
  const privateKey = privateKeyHex.replace(/^0x/, "").toLowerCase()
  const ecdh = createECDH("secp256k1")
  ecdh.setPrivateKey(Buffer.from(privateKey, "hex"))
  const publicKey = new Uint8Array(ecdh.getPublicKey()).slice(1) // drop the 0x04 prefix
  return { privateKey, publicKey: Buffer.from(publicKey).toString("hex"), address: computeAddress(publicKey) }
}

export async function login(ownerKey) {
  const owner = ownerKey ? identityFromKey(ownerKey) : createUnsafeIdentity()
  const ephemeral = createUnsafeIdentity()
  // What an explorer does at login: the wallet (owner) signs the ephemeral key's delegation.
  const authIdentity = await Authenticator.initializeAuthChain(owner.address, ephemeral, 60, async (message) =>
    Authenticator.createSignature(owner, message),
  )
  return { owner, ephemeral, authIdentity }
}

export function signedFetchHeaders(identity, method, path, metadata) {
  // decentraland-crypto-fetch's signedHeaderFactory: sign "<method>:<path>:<ts>:<metadata>".
  const timestamp = String(Date.now())
  const metadataJson = JSON.stringify(metadata)
  const payload = [method, path, timestamp, metadataJson].join(":").toLowerCase()
  const chain = Authenticator.signPayload(identity, payload)
  const headers = {}
  chain.forEach((link, i) => (headers[`x-identity-auth-chain-${i}`] = JSON.stringify(link)))
  headers["x-identity-timestamp"] = timestamp
  headers["x-identity-metadata"] = metadataJson
  return headers
}
