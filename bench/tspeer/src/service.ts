// PresenceService on the official @dcl/rpc server: handlers registered with
// its codegen (`registerService`), streams as async generators that the
// server only advances once the client acknowledged the previous item.

import { RpcServerPort } from "@dcl/rpc"
import { registerService } from "@dcl/rpc/dist/codegen"

import { Metrics } from "./admin"
import {
  Payload,
  PositionPayload,
  PositionResponse,
  PresenceServiceDefinition,
  SubscribeFriendshipPresenceUpdatesResponse,
  UsersResponse,
} from "./gen/presenced/v1/presence"
import { BATCH_SIZE, PresenceEngine, Subscription } from "./presence"

/** What each connection's procedures see (the @dcl/rpc call context). */
export type Session = {
  sessionId: number
  address: string
  // The connection's live subscription, for the stuck-subscriber check.
  subscription: Subscription | undefined
}

export function registerPresenceService(port: RpcServerPort<Session>, engine: PresenceEngine, metrics: Metrics): void {
  registerService(port, PresenceServiceDefinition, async () => ({
    async positionHeartbeat(request: PositionPayload, session: Session): Promise<PositionResponse> {
      if (request.position === undefined) {
        return { response: { $case: "badRequest", badRequest: { message: "position is required" } } }
      }
      const outcome = engine.heartbeat(session.sessionId, request.position, Date.now())
      switch (outcome.kind) {
        case "accepted":
          return { response: { $case: "position", position: outcome.position } }
        case "too-many-requests":
          return {
            response: {
              $case: "tooManyRequests",
              tooManyRequests: { message: outcome.message, retryAfterMs: outcome.retryAfterMs },
            },
          }
        case "bad-request":
          return { response: { $case: "badRequest", badRequest: { message: outcome.message } } }
      }
    },

    async *getOnlineFriends(_request: Payload, session: Session): AsyncGenerator<UsersResponse> {
      const friends = engine.onlineFriends(session.sessionId)
      for (let i = 0; i < friends.length; i += BATCH_SIZE) {
        yield { users: friends.slice(i, i + BATCH_SIZE) }
      }
    },

    async *subscribeFriendshipPresenceUpdates(
      _request: Payload,
      session: Session,
    ): AsyncGenerator<SubscribeFriendshipPresenceUpdatesResponse> {
      // Replaces (and so ends) this connection's previous subscription.
      const subscription = engine.subscribe(session.sessionId)
      session.subscription = subscription
      try {
        while (true) {
          // Everything that changed while the last item waited for its ACK,
          // one entry per friend.
          const updates = await subscription.next()
          if (updates === undefined) return
          metrics.updatesDelivered += updates.length
          metrics.streamItemsSent++
          subscription.awaitingAckSince = Date.now()
          yield { updates }
          subscription.awaitingAckSince = undefined
        }
      } finally {
        engine.unsubscribe(session.sessionId, subscription)
        if (session.subscription === subscription) session.subscription = undefined
      }
    },
  }))
}
