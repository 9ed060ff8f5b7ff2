"""BGP for moor (issue: BGP-routed pods). So far the wire format: framing (`wire`), OPEN
capabilities (`capability`), one module per message (`message/`) and per path attribute
(`attribute/`), with RFC 7606 error handling. The asyncio session, RIB and speaker come next."""
