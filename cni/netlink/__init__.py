"""Netlink for the CNI plugin: `wire` is the byte format, `rtnl` the request API, `netns` the
namespace switching. Standard library only, to keep the plugin's start-up short."""
