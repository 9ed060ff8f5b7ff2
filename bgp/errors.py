"""BGP errors (RFC 4271 section 4.5, RFC 7606): a NOTIFICATION's code, subcode and data."""
from __future__ import annotations

# codes
MESSAGE_HEADER = 1
OPEN_MESSAGE = 2
UPDATE_MESSAGE = 3
HOLD_TIMER_EXPIRED = 4
FSM_ERROR = 5
CEASE = 6
ROUTE_REFRESH_MESSAGE = 7

# message header subcodes
CONNECTION_NOT_SYNCHRONIZED, BAD_MESSAGE_LENGTH, BAD_MESSAGE_TYPE = 1, 2, 3
# OPEN subcodes
UNSUPPORTED_VERSION, BAD_PEER_AS, BAD_BGP_IDENTIFIER, UNSUPPORTED_OPTIONAL_PARAMETER = 1, 2, 3, 4
UNACCEPTABLE_HOLD_TIME, UNSUPPORTED_CAPABILITY = 6, 7
# UPDATE subcodes
MALFORMED_ATTRIBUTE_LIST, UNRECOGNIZED_WELL_KNOWN, MISSING_WELL_KNOWN = 1, 2, 3
ATTRIBUTE_FLAGS_ERROR, ATTRIBUTE_LENGTH_ERROR, INVALID_ORIGIN = 4, 5, 6
INVALID_NEXT_HOP, OPTIONAL_ATTRIBUTE_ERROR, INVALID_NETWORK_FIELD, MALFORMED_AS_PATH = 8, 9, 10, 11
# CEASE subcodes (RFC 4486)
MAX_PREFIXES, ADMIN_SHUTDOWN, PEER_DECONFIGURED, ADMIN_RESET, CONNECTION_REJECTED = 1, 2, 3, 4, 5
COLLISION_RESOLUTION = 7


class BGPError(Exception):
    """A protocol error that ends the session with a NOTIFICATION (code, subcode, data)."""

    def __init__(self, code: int, subcode: int, msg: str, data: bytes = b""):
        super().__init__(msg)
        self.code, self.subcode, self.data = code, subcode, data



class FamilyError(ValueError):
    """A malformed MP_REACH/MP_UNREACH whose AFI/SAFI is known but whose NLRI cannot be located or
    parsed: that family alone is disabled for the session (RFC 7606 sections 2, 5.3 and 7.11;
    RFC 4760 section 7), the rest of the UPDATE and the other families carry on."""

    def __init__(self, afi: int, safi: int, msg: str):
        super().__init__(msg)
        self.afi, self.safi = afi, safi
