"""WebSocket close codes presenced sends, and why."""

GOING_AWAY = 1001  # the server is shutting down
PROTOCOL_ERROR = 1002  # a frame that is not a Decentraland RPC message
POLICY_VIOLATION = 1008  # a client too slow to read what it asked for
MESSAGE_TOO_BIG = 1009  # sent by trio-websocket itself past max_frame_bytes
INTERNAL_ERROR = 1011  # a bug on our side, or a connection that stopped answering
TRY_AGAIN_LATER = 1013  # the server is full or the store is unavailable
UNAUTHORIZED = 3003  # the login frame did not verify (same code as social-service-ea)
AUTH_TIMEOUT = 3004  # no login frame in time (same code as social-service-ea)
