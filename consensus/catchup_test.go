package consensus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// entryBlocker passes heartbeats and holds back log entries and snapshots
// sent to the address in blocked, as a link too slow to carry them would.
type entryBlocker struct {
	*raft.InmemTransport
	blocked *atomic.Value // raft.ServerAddress; "" blocks nothing
}

var errHeldBack = errors.New("held back by the test")

func (b *entryBlocker) held(target raft.ServerAddress) bool {
	a, _ := b.blocked.Load().(raft.ServerAddress)
	return a != "" && a == target
}

func (b *entryBlocker) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if len(args.Entries) > 0 && b.held(target) {
		return errHeldBack
	}
	return b.InmemTransport.AppendEntries(id, target, args, resp)
}

// AppendEntriesPipeline is refused so that every append goes through
// AppendEntries.
func (b *entryBlocker) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

func (b *entryBlocker) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if b.held(target) {
		return errHeldBack
	}
	return b.InmemTransport.InstallSnapshot(id, target, args, resp, data)
}

// TestWipedNodeNotReadyUntilCaughtUp: a member that comes back with an
// empty state hears the leader at once, but is not ready (and so not sent
// traffic by a load balancer that goes by /readyz) until it has applied
// what the cluster had acknowledged.
func TestWipedNodeNotReadyUntilCaughtUp(t *testing.T) {
	ctx := testCtx(t)
	var blocked atomic.Value
	blocked.Store(raft.ServerAddress(""))
	const n = 3
	addrs := make([]raft.ServerAddress, n)
	inmem := make([]*raft.InmemTransport, n)
	for i := range n {
		addrs[i], inmem[i] = raft.NewInmemTransport("")
	}
	connect := func() {
		for i := range n {
			for j := range n {
				if i != j {
					inmem[i].Connect(addrs[j], inmem[j])
				}
			}
		}
	}
	connect()
	var mu sync.Mutex
	byAddr := map[raft.ServerAddress]*Replica{}
	reps := make([]*Replica, n)
	start := func(i int) *Replica {
		logs := raft.NewInmemStore()
		r, err := NewReplica(Config{
			ID:               fmt.Sprintf("r%d", i),
			Logs:             logs,
			Stable:           logs,
			Snapshots:        raft.NewInmemSnapshotStore(),
			Transport:        &entryBlocker{InmemTransport: inmem[i], blocked: &blocked},
			KV:               openKV(t),
			Limits:           testLimits,
			HeartbeatTimeout: 500 * time.Millisecond,
			ElectionTimeout:  500 * time.Millisecond,
			LeaderReadIndex: func(ctx context.Context, addr string) (uint64, error) {
				mu.Lock()
				src := byAddr[raft.ServerAddress(addr)]
				mu.Unlock()
				if src == nil {
					return 0, fmt.Errorf("no replica at %s", addr)
				}
				return src.ReadIndex(ctx)
			},
			Logger: testLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Shutdown() })
		mu.Lock()
		reps[i], byAddr[addrs[i]] = r, r
		mu.Unlock()
		return r
	}
	var servers []raft.Server
	for i := range n {
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprintf("r%d", i)), Address: addrs[i], Suffrage: raft.Voter})
		start(i)
	}
	if err := reps[0].Bootstrap(servers); err != nil {
		t.Fatal(err)
	}
	var leader *Replica
	waitFor(t, "a leader and every member ready", func() bool {
		leader = nil
		for _, r := range reps {
			if r.Ready() != nil {
				return false
			}
			if r.Raft().State() == raft.Leader {
				leader = r
			}
		}
		return leader != nil
	})
	wiped := 0
	for wiped < n && reps[wiped] == leader {
		wiped++
	}
	if err := reps[wiped].Shutdown(); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		mustPut(t, leader, fmt.Sprintf("k%02d", i), "v")
	}

	// The member comes back empty, at the same address, and gets
	// heartbeats but no entries.
	blocked.Store(addrs[wiped])
	_, inmem[wiped] = raft.NewInmemTransport(addrs[wiped])
	connect()
	back := start(wiped)
	waitFor(t, "the wiped member to hear the leader and wait for its index", func() bool {
		addr, _ := back.Raft().LeaderWithID()
		err := back.Ready()
		return addr != "" && err != nil && strings.Contains(err.Error(), "catching up with the cluster: applied index")
	})
	got, err := back.Get(ctx, &kvstorev1.GetRequest{Key: []byte("k19"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
	if err != nil || got.GetKv() != nil {
		t.Fatalf("the test holds nothing back: k19 is %v (%v)", got.GetKv(), err)
	}

	blocked.Store(raft.ServerAddress(""))
	waitFor(t, "the wiped member to be ready", func() bool { return back.Ready() == nil })
	got, err = back.Get(ctx, &kvstorev1.GetRequest{Key: []byte("k19"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
	if err != nil || string(got.GetKv().GetValue()) != "v" {
		t.Fatalf("ready without k19: %v (%v)", got.GetKv(), err)
	}
}
