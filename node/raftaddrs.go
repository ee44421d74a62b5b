package node

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/membership"
)

// raftAddrs gives raft's transport the address to dial for a server id
// (hashicorp/raft's ServerAddressProvider): the address gossip knows the
// server by, else the one in raft's configuration, with the id attached
// (raftTarget), so that the node reached must be that server.
//
// Raft's configuration keeps the address each server had when the leader
// last updated it (reconcile does), and only a leader updates it. When
// every node comes back on a new address at once (containers restarted
// together, pods rescheduled), no leader can be elected through the old
// addresses, which may even belong to other nodes by then: the cluster
// never recovered. Consul resolves raft addresses through gossip for the
// same reason.
//
// Raft also encodes its own address through the provider, as the sender of
// every request (NetworkTransport.EncodePeer): for this node it is the
// advertised address alone, which is what followers report as the
// leader's address and dial for forwarding and read indexes.
type raftAddrs struct {
	self     raft.ServerID
	selfAddr raft.ServerAddress
	gossip   atomic.Pointer[membership.Gossip]
	raft     atomic.Pointer[raft.Raft]
	stale    atomic.Bool // gossip changed since byID was built

	mu   sync.Mutex
	byID map[string]string // live gossip members' advertised addresses
}

// changed marks the gossip view changed; the next lookup rebuilds it.
func (a *raftAddrs) changed() { a.stale.Store(true) }

// ServerAddr implements raft.ServerAddressProvider.
func (a *raftAddrs) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if id == a.self && a.selfAddr != "" {
		return a.selfAddr, nil
	}
	if addr, ok := a.gossipAddr(string(id)); ok {
		return raftTarget(addr, string(id)), nil
	}
	// GetConfiguration reads raft's latest configuration without waiting
	// for its main loop.
	if r := a.raft.Load(); r != nil {
		if f := r.GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				if s.ID == id {
					return raftTarget(string(s.Address), string(id)), nil
				}
			}
		}
	}
	return "", fmt.Errorf("no address known for server %s", id)
}

// addrOf is where to reach node id: where gossip finds it, else fallback
// (its address in raft's configuration).
func (a *raftAddrs) addrOf(id, fallback string) string {
	if addr, ok := a.gossipAddr(id); ok {
		return addr
	}
	return fallback
}

// gossipAddr is the address a live gossip member id advertises.
func (a *raftAddrs) gossipAddr(id string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if g := a.gossip.Load(); g != nil && (a.byID == nil || a.stale.Swap(false)) {
		a.byID = map[string]string{}
		for _, m := range g.Members() {
			if (m.State == membership.StateAlive || m.State == membership.StateSuspect) && m.Meta.Addr != "" {
				a.byID[m.ID] = m.Meta.Addr
			}
		}
	}
	addr, ok := a.byID[id]
	return addr, ok
}
