"""The lab: moor's scenarios on network namespaces (`./run demo`), including the simulated buggy
gateways of the loss cases. Only the lab and the tests write packet-filter rules; moor never does."""
