package node

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/membership"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// bootstrapLogEvery is how often a node waiting for --bootstrap-expect
// servers repeats what it sees when nothing changed.
const bootstrapLogEvery = 30 * time.Second

// bootstrapState is what a node waiting for --bootstrap-expect servers
// tells the log, /readyz and Status.
type bootstrapState struct {
	// hasState tells whether the node has raft state: it no longer waits
	// then, whatever the loop last saw.
	hasState func() bool

	mu      sync.Mutex
	expect  int
	seen    int
	waiting string // "" once the node has raft state, or never waited
}

func (b *bootstrapState) set(expect, seen int, waiting string) {
	b.mu.Lock()
	b.expect, b.seen, b.waiting = expect, seen, waiting
	b.mu.Unlock()
}

func (b *bootstrapState) get() (expect, seen int, waiting string) {
	b.mu.Lock()
	expect, seen, waiting = b.expect, b.seen, b.waiting
	b.mu.Unlock()
	if waiting != "" && b.hasState() {
		return 0, 0, ""
	}
	return expect, seen, waiting
}

// bootstrapLoop starts a new cluster once BootstrapExpect servers see each
// other and none has raft state. Every one of them computes the same list
// from gossip and bootstraps with it; raft refuses a second bootstrap.
// While it waits it says what it sees: in the log when that changes (and
// every bootstrapLogEvery), in /readyz and in Status.
func (n *Node) bootstrapLoop(ctx context.Context, expect int, kick <-chan struct{}) {
	if expect <= 1 || n.replica.HasState() {
		return
	}
	defer n.boot.set(0, 0, "")
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastWaiting string
	var lastLog time.Time
	for !n.replica.HasState() {
		v := viewBootstrap(n.gossip.Members(), expect)
		if v.chosen != nil {
			servers, err := n.bootstrapPlan(v.chosen, expect)
			if err == nil {
				n.boot.set(expect, len(v.seen), "bootstrapping a new cluster")
				n.logger.Info("bootstrapping a new cluster", "servers", len(servers), "cluster_id", n.ident.ID())
				if err := n.replica.Bootstrap(servers); err != nil {
					n.logger.Warn("bootstrap", "error", err)
				}
				return
			}
			v.waiting = err.Error()
		}
		n.boot.set(expect, len(v.seen), v.waiting)
		if v.waiting != lastWaiting || time.Since(lastLog) >= bootstrapLogEvery {
			n.logger.Info("waiting to bootstrap a new cluster", "expect", expect, "seen", len(v.seen), "servers", v.seen, "detail", v.waiting)
			lastWaiting, lastLog = v.waiting, time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
	}
}

// bootstrapPlan returns the configuration to bootstrap the chosen servers
// with, once this node has the new cluster's id on disk. The first of the
// servers (by id) makes the id and gossips it; the others take it from its
// meta.
func (n *Node) bootstrapPlan(chosen []membership.Member, expect int) ([]raft.Server, error) {
	id, err := bootstrapClusterID(chosen, n.id, n.ident.ID())
	if err != nil {
		return nil, err
	}
	how := "taken from " + chosen[0].ID + ", the first of the servers bootstrapping a new cluster"
	if id == "" {
		id, how = newClusterID(), "made for a new cluster of "+strconv.Itoa(expect)+" servers"
	}
	if err := n.ident.set(id, how); err != nil {
		return nil, err
	}
	servers := make([]raft.Server, 0, len(chosen))
	for _, m := range chosen {
		servers = append(servers, raft.Server{ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.Meta.Addr), Suffrage: raft.Voter})
	}
	return servers, nil
}

// nodeStore is the replica as the API serves it, with what the node adds:
// readiness and status say why a node waiting to bootstrap has no leader.
type nodeStore struct {
	api.Store
	boot *bootstrapState
}

func (s nodeStore) Ready() error {
	err := s.Store.Ready()
	if err != nil {
		if _, _, waiting := s.boot.get(); waiting != "" {
			return fmt.Errorf("%w: %s", err, waiting)
		}
	}
	return err
}

func (s nodeStore) Status(ctx context.Context) (*kvstorev1.StatusResponse, error) {
	resp, err := s.Store.Status(ctx)
	if err != nil {
		return nil, err
	}
	// A node that hears from a leader is no longer waiting, even before
	// the configuration reached it.
	expect, seen, waiting := s.boot.get()
	if waiting != "" && s.Store.Ready() != nil {
		resp.BootstrapExpect, resp.BootstrapSeen, resp.BootstrapWaiting = uint32(expect), uint32(seen), waiting
	}
	return resp, nil
}
