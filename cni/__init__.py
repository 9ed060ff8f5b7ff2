"""moor's CNI plugin: its attachment modes (macvlan, routed) over the protocol toolkit (cni.spec) and
the one netlink/netns toolkit (cni.netlink)."""
