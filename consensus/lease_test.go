package consensus

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// fakeClock is the lessor's clock, moved by the test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReplicaLeaseExpiry(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	clock := &fakeClock{t: time.Unix(1000, 0)}
	r.lessor.mu.Lock()
	r.lessor.now = clock.now
	r.lessor.mu.Unlock()
	waitFor(t, "lessor primary", r.lessor.isPrimary)
	ctx := testCtx(t)

	if _, err := r.LeaseGrant(ctx, &kvstorev1.GrantRequest{Id: 5, TtlSeconds: 1}); err == nil {
		t.Fatal("a TTL under the minimum was granted")
	}
	g, err := r.LeaseGrant(ctx, &kvstorev1.GrantRequest{TtlSeconds: 3})
	if err != nil {
		t.Fatal(err)
	}
	id := g.GetId()
	if _, err := r.LeaseGrant(ctx, &kvstorev1.GrantRequest{Id: id, TtlSeconds: 3}); !errors.Is(err, ErrLeaseExists) {
		t.Fatalf("granting lease %d twice: %v", id, err)
	}
	if _, err := r.Put(ctx, &kvstorev1.PutRequest{Key: []byte("k"), Lease: id + 1}); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("put with an unknown lease: %v", err)
	}
	// A txn whose put names an unknown lease writes nothing at all.
	rev := r.kv.AppliedIndex()
	_, err = r.Txn(ctx, &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{
		{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("t1"), Value: []byte("v")}}},
		{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("t2"), Lease: id + 1}}},
	}})
	if !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("txn with an unknown lease: %v", err)
	}
	if got, _ := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("t1")}); got.GetKv() != nil {
		t.Fatal("a rejected txn wrote t1")
	}
	for _, k := range []string{"a", "b"} {
		if _, err := r.Put(ctx, &kvstorev1.PutRequest{Key: []byte(k), Value: []byte("v"), Lease: id}); err != nil {
			t.Fatal(err)
		}
	}
	if r.kv.AppliedIndex() <= rev {
		t.Fatal("puts did not advance the revision")
	}

	// Renewed halfway, the lease outlives its first deadline.
	clock.add(2 * time.Second)
	if ttl, _, err := r.LeaseKeepAlive(ctx, id); err != nil || ttl != 3 {
		t.Fatalf("keep-alive = %d, %v", ttl, err)
	}
	clock.add(2 * time.Second)
	if ids := r.lessor.expired(); len(ids) != 0 {
		t.Fatalf("renewed lease expired: %v", ids)
	}
	ttl, err := r.LeaseTimeToLive(ctx, &kvstorev1.TimeToLiveRequest{Id: id, Keys: true})
	if err != nil || ttl.GetTtlSeconds() != 1 || len(ttl.GetKeys()) != 2 {
		t.Fatalf("TimeToLive = %v, %v", ttl, err)
	}

	// A new term restarts every lease's full TTL.
	r.lessor.demote()
	r.lessor.promote()
	clock.add(2 * time.Second)
	if ids := r.lessor.expired(); len(ids) != 0 {
		t.Fatalf("lease expired within its TTL after a promotion: %v", ids)
	}

	// Past the deadline the leader revokes it: both keys go in one
	// revision.
	clock.add(2 * time.Second)
	waitFor(t, "lease expiry", func() bool {
		got, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a")})
		return err == nil && got.GetKv() == nil
	})
	got, _ := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("b")})
	if got.GetKv() != nil {
		t.Fatal("b outlived its lease")
	}
	if _, _, err := r.LeaseKeepAlive(ctx, id); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("keep-alive of an expired lease: %v", err)
	}
	if l, err := r.Leases(ctx); err != nil || len(l.GetLeases()) != 0 {
		t.Fatalf("Leases = %v, %v", l, err)
	}
}

func TestReplicaAutoCompact(t *testing.T) {
	st := newReplicaStores(t)
	_, trans := raft.NewInmemTransport(st.addr)
	r, err := NewReplica(Config{
		ID: "node-1", Logs: st.logs, Stable: st.logs, Snapshots: st.snaps, Transport: trans, KV: st.kv,
		Limits: Limits{MaxRangePairs: 100}, Bootstrap: true,
		HeartbeatTimeout: 50 * time.Millisecond, ElectionTimeout: 50 * time.Millisecond,
		Retention: Retention{Revisions: 5, Every: 10 * time.Millisecond},
		Logger:    testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Shutdown()
	waitFor(t, "leader", func() bool { return r.Ready() == nil && r.Raft().State() == raft.Leader })
	for i := range 20 {
		mustPut(t, r, "k", string(rune('a'+i)))
	}
	applied := r.kv.AppliedIndex()
	waitFor(t, "compaction", func() bool { return r.kv.CompactedRevision() >= applied-5 })
	if _, err := r.Get(testCtx(t), &kvstorev1.GetRequest{Key: []byte("k"), Revision: 2}); err == nil {
		t.Fatal("read below the compacted revision answered")
	}
}

func TestParseRetention(t *testing.T) {
	for in, want := range map[string]Retention{
		"0": {}, "1h": {Age: time.Hour}, "10000": {Revisions: 10000}, "90s": {Age: 90 * time.Second},
	} {
		got, err := ParseRetention(in)
		if err != nil || got != want {
			t.Errorf("ParseRetention(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1h", "abc", "10ms"} {
		if _, err := ParseRetention(bad); err == nil {
			t.Errorf("ParseRetention(%q) accepted", bad)
		}
	}
}
