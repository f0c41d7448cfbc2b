"""Container networks, Docker's model: `none` (only lo), `host`, `bridge` (the default bridge
nsmagic0), user-defined bridges (`nsmagic network create NAME`, names resolved through a
shared /etc/hosts), `container:NAME` (another container's network namespace), `pasta`
(rootless, through passt's pasta).

    modes.py     --network values: which namespace a run gets (stdlib; PID 1 and spec use it)
    ports.py     -p HOST:CONTAINER[/tcp|udp] and --network-rate, parsed (stdlib)
    networks.py  network definitions in the store: create, list, remove, the default one
    ipam.py      address leases, a locked file per network that outlives a crash
    client.py    the runner's side: attach a run's PID 1 through the network helper
    netd.py      the network helper (`nsmagic-netd`): the one process that imports pyroute2
    links.py     bridge, veth, addresses, routes and tc qdiscs, all netlink through pyroute2
    nat.py       masquerade, published ports: one nftables table (or iptables chains)
    rootless.py  pasta for runs without root

Only netd.py and links.py import pyroute2 (~300 ms): a run's start path never does."""
