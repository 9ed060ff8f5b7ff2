"""moor's eBPF probe (bcc): kernel drops with their reasons per pod and flow, UDP receive-buffer
overflow per socket, fragments, and VPC sessions per pod and node. Kernel-struct offsets come from
the running kernel's BTF, never from the installed headers."""
