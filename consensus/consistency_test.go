package consensus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// startGroup starts n replicas over raft's in-memory transport, as one
// cluster, and returns them with the leader first.
func startGroup(t *testing.T, n int) []*Replica {
	t.Helper()
	addrs := make([]raft.ServerAddress, n)
	trans := make([]*raft.InmemTransport, n)
	for i := range n {
		addrs[i], trans[i] = raft.NewInmemTransport("")
	}
	for i := range n {
		for j := range n {
			if i != j {
				trans[i].Connect(addrs[j], trans[j])
			}
		}
	}
	var mu sync.Mutex
	byAddr := map[string]*Replica{}
	lookup := func(addr string) (*Replica, error) {
		mu.Lock()
		defer mu.Unlock()
		if r := byAddr[addr]; r != nil {
			return r, nil
		}
		return nil, fmt.Errorf("no replica at %s yet", addr)
	}
	reps := make([]*Replica, n)
	var servers []raft.Server
	for i := range n {
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprintf("r%d", i+1)), Address: addrs[i], Suffrage: raft.Voter})
	}
	for i := range n {
		logs := raft.NewInmemStore()
		r, err := NewReplica(Config{
			ID:        fmt.Sprintf("r%d", i+1),
			Logs:      logs,
			Stable:    logs,
			Snapshots: raft.NewInmemSnapshotStore(),
			Transport: trans[i],
			KV:        openKV(t),
			Limits:    testLimits,
			// Slower than the one-node tests': three nodes under -race on a
			// busy machine lost their leader at 50ms.
			HeartbeatTimeout: 500 * time.Millisecond,
			ElectionTimeout:  500 * time.Millisecond,
			MemberHash: func(ctx context.Context, _, addr string, rev uint64) (storage.StateHash, error) {
				r, err := lookup(addr)
				if err != nil {
					return storage.StateHash{}, err
				}
				return r.StateHash(ctx, rev)
			},
			LeaderReadIndex: func(ctx context.Context, addr string) (uint64, error) {
				r, err := lookup(addr)
				if err != nil {
					return 0, err
				}
				return r.ReadIndex(ctx)
			},
			Logger: testLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Shutdown() })
		// The first bootstraps; the others hear of the cluster from it.
		if i == 0 {
			if err := r.Bootstrap(servers); err != nil {
				t.Fatal(err)
			}
		}
		mu.Lock()
		reps[i], byAddr[string(addrs[i])] = r, r
		mu.Unlock()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		for i, r := range reps {
			if r.Raft().State() == raft.Leader && r.Ready() == nil {
				reps[0], reps[i] = reps[i], reps[0]
				return reps
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConsistencyCheck: members with equal states pass the check; a
// member whose state was changed behind raft's back is named by a CORRUPT
// alarm, which then refuses writes everywhere and reads on that member.
func TestConsistencyCheck(t *testing.T) {
	reps := startGroup(t, 3)
	leader := reps[0]
	ctx := testCtx(t)
	for i := range 20 {
		mustPut(t, leader, fmt.Sprintf("k%02d", i), fmt.Sprintf("v%d", i))
	}
	rev := leader.kv.AppliedIndex()
	for _, r := range reps {
		waitFor(t, r.id+" to apply", func() bool { return r.kv.AppliedIndex() >= rev })
	}

	rep, err := leader.CheckConsistency(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Hashes) != 3 || len(rep.Corrupt) != 0 || len(rep.Skipped) != 0 {
		t.Fatalf("equal states: %+v", rep)
	}
	if _, err := reps[1].CheckConsistency(ctx); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a check on a follower: %v", err)
	}

	// A follower's store changes behind raft's back, at a revision it
	// has applied: a disk that returned other bytes, a bug.
	bad := reps[2]
	b := bad.kv.NewBatch()
	if err := b.Begin(bad.kv.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Put([]byte("k05"), []byte("flipped"), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}

	rep, err = leader.CheckConsistency(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Corrupt) != 1 || rep.Corrupt[0] != bad.id {
		t.Fatalf("one member changed behind raft's back: corrupt %v, want [%s]; %+v", rep.Corrupt, bad.id, rep)
	}
	for _, r := range reps {
		waitFor(t, r.id+" to apply the CORRUPT alarm", func() bool {
			_, ok := r.alarms.get().find(kvstorev1.AlarmType_ALARM_TYPE_CORRUPT, bad.id)
			return ok
		})
	}
	if _, err := leader.Put(ctx, &kvstorev1.PutRequest{Key: []byte("x"), Value: []byte("1")}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a put under a CORRUPT alarm: %v", err)
	}
	if err := bad.Ready(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("the corrupt member is ready: %v", err)
	}
	if _, err := bad.Get(ctx, &kvstorev1.GetRequest{Key: []byte("k05"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a read on the corrupt member: %v", err)
	}
	if err := reps[1].Ready(); err != nil {
		t.Fatalf("a sound member is not ready: %v", err)
	}
	if got, err := reps[1].Get(ctx, &kvstorev1.GetRequest{Key: []byte("k05"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}); err != nil || string(got.GetKv().GetValue()) != "v5" {
		t.Fatalf("a read on a sound member: %v %v", got, err)
	}

	// Disarmed, writes go on.
	if _, err := leader.Alarm(ctx, &kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE}); err != nil {
		t.Fatal(err)
	}
	mustPut(t, leader, "x", "1")
}
