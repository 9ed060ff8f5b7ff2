"""Static IPAM (issue: fixed pod IPs). Until it lands, moor delegates IPAM to the plugin named by
`ipam.type` (the reference host-local and static plugins work)."""
