package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kvstore/kvstore/api"
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
		n.advertiseState(ctx)
		return
	}
	defer n.boot.set(0, 0, "")
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastWaiting string
	var lastLog time.Time
	for !n.replica.HasState() {
		v := viewBootstrap(n.gossip.Members(), expect)
		if v.servers != nil {
			n.boot.set(expect, len(v.seen), "bootstrapping a new cluster")
			n.logger.Info("bootstrapping a new cluster", "servers", len(v.servers))
			if err := n.replica.Bootstrap(v.servers); err != nil {
				n.logger.Warn("bootstrap", "error", err)
			}
			break
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
	n.advertiseState(ctx)
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
