package consensus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// replicaStores are the seams of one node, kept so a test can restart it.
type replicaStores struct {
	logs  *raft.InmemStore
	snaps *raft.InmemSnapshotStore
	kv    *storage.KV
	addr  raft.ServerAddress
}

func newReplicaStores(t *testing.T) *replicaStores {
	return &replicaStores{
		logs:  raft.NewInmemStore(),
		snaps: raft.NewInmemSnapshotStore(),
		kv:    openKV(t),
		addr:  raft.NewInmemAddr(),
	}
}

// startReplica starts a one-node replica over st and waits until it leads.
func startReplica(t *testing.T, st *replicaStores) *Replica {
	t.Helper()
	_, trans := raft.NewInmemTransport(st.addr)
	r, err := NewReplica(Config{
		ID:               "node-1",
		Logs:             st.logs,
		Stable:           st.logs,
		Snapshots:        st.snaps,
		Transport:        trans,
		KV:               st.kv,
		Limits:           Limits{MaxRangePairs: 100, MaxRangeBytes: 1 << 20},
		Bootstrap:        true,
		HeartbeatTimeout: 50 * time.Millisecond,
		ElectionTimeout:  50 * time.Millisecond,
		Logger:           testLogger(t),
	})
	if err != nil {
		t.Fatalf("NewReplica: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			if err := r.Shutdown(); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		}
	})
	replicaStopped[r] = &stopped
	deadline := time.Now().Add(10 * time.Second)
	for r.Ready() != nil || r.Raft().State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatalf("replica not ready: %v (state %v)", r.Ready(), r.Raft().State())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r
}

var replicaStopped = map[*Replica]*bool{}

func stopReplica(t *testing.T, r *Replica) {
	t.Helper()
	if p := replicaStopped[r]; p != nil {
		*p = true
	}
	delete(replicaStopped, r)
	if err := r.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustPut(t *testing.T, r *Replica, key, value string) *kvstorev1.PutResponse {
	t.Helper()
	resp, err := r.Put(testCtx(t), &kvstorev1.PutRequest{Key: []byte(key), Value: []byte(value)})
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return resp
}

func TestReplicaReadWrite(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	ctx := testCtx(t)

	// A linearizable read right after the election, before any write: it
	// must not wait for a write that never comes.
	get, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a")})
	if err != nil {
		t.Fatalf("first Get: %v", err)
	}
	if get.GetKv() != nil {
		t.Fatalf("first Get found %v", get.GetKv())
	}
	if get.GetHeader().GetNodeId() != "node-1" || get.GetHeader().GetRaftTerm() == 0 {
		t.Fatalf("header %v", get.GetHeader())
	}

	put := mustPut(t, r, "a", "1")
	rev := put.GetHeader().GetRevision()
	if rev <= 0 || put.GetHeader().GetNodeId() != "node-1" {
		t.Fatalf("put header %v", put.GetHeader())
	}
	get, err = r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, get.GetKv(), kvp("a", "1", rev, rev, 1))
	if get.GetHeader().GetRevision() < rev {
		t.Fatalf("read revision %d before the write %d", get.GetHeader().GetRevision(), rev)
	}

	// prev_kv comes back through the replica.
	put2, err := r.Put(ctx, &kvstorev1.PutRequest{Key: []byte("a"), Value: []byte("2"), PrevKv: true})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, put2.GetPrevKv(), kvp("a", "1", rev, rev, 1))
	rev2 := put2.GetHeader().GetRevision()
	if rev2 <= rev {
		t.Fatalf("second put at %d after %d", rev2, rev)
	}

	// Serializable reads are local and see what this node applied.
	sget, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, sget.GetKv(), kvp("a", "2", rev, rev2, 2))

	// Past and future revisions.
	old, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a"), Revision: rev})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, old.GetKv(), kvp("a", "1", rev, rev, 1))
	if _, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a"), Revision: rev2 + 1000}); !errors.Is(err, storage.ErrFutureRevision) {
		t.Fatalf("future Get: %v", err)
	}
	if _, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a"), Revision: -1}); err == nil {
		t.Fatal("negative revision accepted")
	}

	// Txn and Delete carry their entry's revision.
	txn, err := r.Txn(ctx, &kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{cmpModRev("a", rev2)},
		Success: []*kvstorev1.RequestOp{opPut("b", "t", false), opGet("a")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !txn.GetSucceeded() || txn.GetHeader().GetRevision() <= rev2 {
		t.Fatalf("txn %v", txn)
	}
	txnRev := txn.GetHeader().GetRevision()
	b, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("b")})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, b.GetKv(), kvp("b", "t", txnRev, txnRev, 1))
	del, err := r.Delete(ctx, &kvstorev1.DeleteRequest{Key: []byte("a"), RangeEnd: []byte("c"), PrevKv: true})
	if err != nil {
		t.Fatal(err)
	}
	if del.GetDeleted() != 2 || len(del.GetPrevKvs()) != 2 || del.GetHeader().GetRevision() <= txnRev {
		t.Fatalf("delete %v", del)
	}
	get, err = r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a")})
	if err != nil || get.GetKv() != nil {
		t.Fatalf("after delete: %v %v", get, err)
	}
	if got := get.GetHeader().GetRevision(); got < del.GetHeader().GetRevision() {
		t.Fatalf("header revision %d after delete at %d", got, del.GetHeader().GetRevision())
	}
}

func cmpModRev(key string, rev int64) *kvstorev1.Compare {
	return cmpMod(key, eq, rev)
}

func TestReplicaRangePaging(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	ctx := testCtx(t)
	for i := range 7 {
		mustPut(t, r, fmt.Sprintf("p/%d", i), fmt.Sprint(i))
	}
	mustPut(t, r, "q", "outside")

	req := &kvstorev1.RangeRequest{Key: []byte("p/"), Prefix: true, Limit: 3}
	first, err := r.Range(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetKvs()) != 3 || !first.GetMore() || first.GetCount() != 7 {
		t.Fatalf("first page %v", first)
	}
	rev := first.GetHeader().GetRevision()

	// A write between pages is not seen by pages read at the first page's
	// revision.
	mustPut(t, r, "p/1a", "late")

	got := []string{}
	for _, kv := range first.GetKvs() {
		got = append(got, string(kv.GetKey()))
	}
	next := first.GetNextKey()
	for page := 0; len(next) > 0; page++ {
		if page > 5 {
			t.Fatal("paging does not end")
		}
		resp, err := r.Range(ctx, &kvstorev1.RangeRequest{
			Key: next, RangeEnd: []byte("p0"), Limit: 3, Revision: rev,
		})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetHeader().GetRevision() <= rev {
			// The header is the store's revision, the page is as of rev.
			t.Fatalf("header revision %d, store moved past %d", resp.GetHeader().GetRevision(), rev)
		}
		for _, kv := range resp.GetKvs() {
			got = append(got, string(kv.GetKey()))
		}
		if resp.GetMore() != (len(resp.GetNextKey()) > 0) {
			t.Fatalf("more %v with next_key %q", resp.GetMore(), resp.GetNextKey())
		}
		next = resp.GetNextKey()
	}
	want := []string{"p/0", "p/1", "p/2", "p/3", "p/4", "p/5", "p/6"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("pages %q, want %q", got, want)
	}
	// At the latest revision the late key is there.
	all, err := r.Range(ctx, &kvstorev1.RangeRequest{Key: []byte("p/"), Prefix: true, CountOnly: true})
	if err != nil || all.GetCount() != 8 {
		t.Fatalf("latest count %v %v", all, err)
	}
}

func TestReplicaStatusMembers(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	ctx := testCtx(t)
	mustPut(t, r, "a", "1")

	s, err := r.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.GetNodeId() != "node-1" || s.GetAddress() != string(st.addr) || s.GetRaftState() != "Leader" ||
		s.GetLeaderId() != "node-1" || s.GetLeaderAddress() != string(st.addr) || s.GetTerm() == 0 {
		t.Fatalf("status %v", s)
	}
	if s.GetRevision() != int64(st.kv.AppliedIndex()) || s.GetCommitIndex() < uint64(s.GetRevision()) || s.GetAppliedIndex() < uint64(s.GetRevision()) {
		t.Fatalf("status indexes %v (kv at %d)", s, st.kv.AppliedIndex())
	}
	if s.GetHeader().GetNodeId() != "node-1" || s.GetHeader().GetRevision() != s.GetRevision() {
		t.Fatalf("status header %v", s.GetHeader())
	}

	m, err := r.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.GetMembers()) != 1 {
		t.Fatalf("members %v", m)
	}
	wantProto(t, m.GetMembers()[0], &kvstorev1.Member{
		Id: "node-1", Address: string(st.addr), Suffrage: kvstorev1.Suffrage_SUFFRAGE_VOTER, Leader: true,
	})
	if r.ID() != "node-1" {
		t.Fatalf("ID %q", r.ID())
	}
}

// TestReplicaConcurrent: every read started after a write was acknowledged
// sees it, with writers and readers running at once.
func TestReplicaConcurrent(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := []byte(fmt.Sprintf("w%d", w))
			for i := range 20 {
				put, err := r.Put(ctx, &kvstorev1.PutRequest{Key: key, Value: []byte(fmt.Sprint(i))})
				if err != nil {
					errs <- err
					return
				}
				get, err := r.Get(ctx, &kvstorev1.GetRequest{Key: key})
				if err != nil {
					errs <- err
					return
				}
				if string(get.GetKv().GetValue()) != fmt.Sprint(i) || get.GetKv().GetModRevision() != put.GetHeader().GetRevision() || get.GetKv().GetVersion() != int64(i+1) {
					errs <- fmt.Errorf("%s: read %v after put %d at %d", key, get.GetKv(), i, put.GetHeader().GetRevision())
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestReplicaRestart restarts a node on its stores: the data is there, the
// log is replayed without applying anything twice, and a node whose store
// lost what it had checkpointed refuses to start.
func TestReplicaRestart(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	mustPut(t, r, "a", "1")
	p2 := mustPut(t, r, "a", "2")
	if err := r.Raft().Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	mustPut(t, r, "b", "1")
	applied := st.kv.AppliedIndex()
	stopReplica(t, r)

	r = startReplica(t, st)
	ctx := testCtx(t)
	get, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, get.GetKv(), kvp("a", "2", get.GetKv().GetCreateRevision(), p2.GetHeader().GetRevision(), 2))
	if st.kv.AppliedIndex() < applied {
		t.Fatalf("applied went back from %d to %d", applied, st.kv.AppliedIndex())
	}
	p4 := mustPut(t, r, "a", "3")
	get, err = r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	if get.GetKv().GetVersion() != 3 || get.GetKv().GetModRevision() != p4.GetHeader().GetRevision() {
		t.Fatalf("after restart: %v", get.GetKv())
	}
	stopReplica(t, r)

	// A state store that lost what it had checkpointed cannot be brought
	// up here (the snapshot is a checkpoint of that store): it is corrupt,
	// for the node to rebuild from another member or refuse to start.
	_, trans := raft.NewInmemTransport(st.addr)
	_, err = NewReplica(Config{
		ID: "node-1", Logs: st.logs, Stable: st.logs, Snapshots: st.snaps, Transport: trans, KV: openKV(t),
		Limits: Limits{MaxRangePairs: 100, MaxRangeBytes: 1 << 20}, Logger: testLogger(t),
	})
	if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), "behind its own checkpoint") {
		t.Fatalf("NewReplica over a store behind its checkpoint: %v, want a corruption error", err)
	}
}

func TestReplicaShutdown(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	mustPut(t, r, "a", "1")
	stopReplica(t, r)
	ctx := testCtx(t)
	if _, err := r.Put(ctx, &kvstorev1.PutRequest{Key: []byte("a"), Value: []byte("2")}); err == nil {
		t.Fatal("Put after Shutdown succeeded")
	}
	if _, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a")}); err == nil {
		t.Fatal("linearizable Get after Shutdown succeeded")
	}
	// The store stays open for its owner: serializable reads still answer.
	sget, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
	if err != nil || string(sget.GetKv().GetValue()) != "1" {
		t.Fatalf("serializable Get after Shutdown: %v %v", sget, err)
	}
}

func TestNewReplicaErrors(t *testing.T) {
	if _, err := NewReplica(Config{}); err == nil {
		t.Fatal("NewReplica with no id succeeded")
	}
}

// TestReplicaNoLeader: a node that has no cluster yet refuses writes and
// linearizable reads with ErrNotLeader, and still serves serializable reads.
func TestReplicaNoLeader(t *testing.T) {
	st := newReplicaStores(t)
	_, trans := raft.NewInmemTransport(st.addr)
	r, err := NewReplica(Config{
		ID: "lonely", Logs: st.logs, Stable: st.logs, Snapshots: st.snaps, Transport: trans, KV: st.kv,
		Limits: testLimits, HeartbeatTimeout: 50 * time.Millisecond, ElectionTimeout: 50 * time.Millisecond,
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Shutdown(); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	ctx := testCtx(t)
	if r.Ready() == nil {
		t.Fatal("Ready with no cluster")
	}
	if _, err := r.Put(ctx, &kvstorev1.PutRequest{Key: []byte("a")}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Put: %v", err)
	}
	if _, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a")}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Get: %v", err)
	}
	if _, err := r.Range(ctx, &kvstorev1.RangeRequest{Key: []byte("a")}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Range: %v", err)
	}
	resp, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("a"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
	if err != nil || resp.GetKv() != nil || resp.GetHeader().GetRevision() != 0 {
		t.Fatalf("serializable Get: %v %v", resp, err)
	}
	s, err := r.Status(ctx)
	if err != nil || s.GetRaftState() == "Leader" || s.GetLeaderId() != "" {
		t.Fatalf("status %v %v", s, err)
	}
}

// TestReplicaManyReaders: concurrent linearizable reads share leadership
// checks and all see a write acknowledged before they started.
func TestReplicaManyReaders(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	ctx := testCtx(t)
	for round := range 3 {
		put := mustPut(t, r, "k", fmt.Sprint(round))
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				get, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("k")})
				if err != nil {
					errs <- err
					return
				}
				if get.GetKv().GetModRevision() != put.GetHeader().GetRevision() {
					errs <- fmt.Errorf("round %d: read %v, write was at %d", round, get.GetKv(), put.GetHeader().GetRevision())
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
	// A canceled context ends the read with the context's error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.Get(cctx, &kvstorev1.GetRequest{Key: []byte("k")}); err == nil {
		// The read index may already have been served; either way no hang.
		t.Log("read with a canceled context answered")
	}
}
