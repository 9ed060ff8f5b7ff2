"""The CNI protocol, as both of moor's plugins (moor, moor-ipam) and the agent's CNI server speak it:
the environment (env), errors with the spec's codes (errors), results in every version (result),
version negotiation (version), the executable's stdin/stdout/exit code (executable), executing a
delegated plugin (delegate), the generic network-config decoding (netconf) and the per-attachment
lock. It imports nothing of moor's modes, of ipam/ or of netlink: they build on it.

Its helpers for a lean start-up live here too: JSON without `json` (jsonc), data classes without
`dataclasses` (record), libcni's name rules without `re` (names).
"""
