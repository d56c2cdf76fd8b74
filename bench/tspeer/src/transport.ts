// An @dcl/rpc Transport over one `ws` socket, as the social service wraps its
// sockets: an event emitter fed by the socket's messages, binary sends, and a
// cap on what may wait in the socket's buffer for a client that stops reading.

import type { Transport, TransportEvents } from "@dcl/rpc"
import mitt from "mitt"
import WebSocket from "ws"

export type WsTransport = Transport & {
  /** Hands one inbound message to the RPC server. */
  receive(message: Uint8Array): void
  /** The socket closed: the RPC server closes the ports and their streams. */
  closed(): void
}

export function wsTransport(socket: WebSocket, sendQueueBytes: number, onSlowConsumer: () => void): WsTransport {
  const events = mitt<TransportEvents>()
  let open = true
  return {
    on: events.on,
    emit: events.emit,
    get isConnected() {
      return open && socket.readyState === WebSocket.OPEN
    },
    sendMessage(message: Uint8Array) {
      if (!open || socket.readyState !== WebSocket.OPEN) return
      socket.send(message, { binary: true })
      if (socket.bufferedAmount > sendQueueBytes) onSlowConsumer()
    },
    close() {
      socket.close()
    },
    receive(message: Uint8Array) {
      events.emit("message", message)
    },
    closed() {
      if (open) {
        open = false
        events.emit("close", {})
      }
    },
  }
}
