"""Login verification (AuthChain over signed-fetch headers) and the matching client side.

Pure functions: no I/O, no trio. The format is that of Decentraland's signed fetch
(`@dcl/crypto`, `@dcl/crypto-middleware`); docs/protocol.md describes the login frame.
"""

from presenced.auth.authchain import (
    AUTH_FAILURE_REASONS,
    AuthError,
    SeenLogins,
    VerifiedLinks,
    VerifiedLogin,
    verify_auth_chain,
    verify_login,
    verify_login_frame,
    verify_login_once,
)
from presenced.auth.eth import (
    address_of_private_key,
    keccak256,
    personal_message_hash,
    recover_personal_signer,
    sign_personal_message,
    to_checksum_address,
)
from presenced.auth.identity import Identity, ephemeral_message, login_frame, login_headers

__all__ = [
    "AUTH_FAILURE_REASONS",
    "AuthError",
    "Identity",
    "SeenLogins",
    "VerifiedLinks",
    "VerifiedLogin",
    "address_of_private_key",
    "ephemeral_message",
    "keccak256",
    "login_frame",
    "login_headers",
    "personal_message_hash",
    "recover_personal_signer",
    "sign_personal_message",
    "to_checksum_address",
    "verify_auth_chain",
    "verify_login",
    "verify_login_frame",
    "verify_login_once",
]
