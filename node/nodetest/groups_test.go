package nodetest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

func createGroup(t *testing.T, ctx context.Context, nd *nodetest.Node, name, prefix string, replicas ...string) *kvstorev1.GroupInfo {
	t.Helper()
	end := []byte(prefix)
	end[len(end)-1]++
	resp, err := nd.Client().Cluster.CreateGroup(ctx, connect.NewRequest(&kvstorev1.CreateGroupRequest{
		Name: name, Start: []byte(prefix), End: end, Replicas: replicas,
	}))
	if err != nil {
		t.Fatalf("create group %s through %s: %v", name, nd.Name(), err)
	}
	return resp.Msg.GetGroup()
}

// TestGroupsServeTheirKeys gives /b/ to a group on n2..n4 of a 4-node
// cluster and writes and reads both groups' keys through every node, n1
// (which hosts no replica of the group) included.
func TestGroupsServeTheirKeys(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 4)
	n1 := c.Node("n1")
	if _, err := put(ctx, n1.Client().KV, "/a/0", "meta"); err != nil {
		t.Fatal(err)
	}
	g := createGroup(t, ctx, n1, "b", "/b/", "n2", "n3", "n4")
	if g.GetId() == 0 {
		t.Fatalf("created %v", g)
	}
	_, err := n1.Client().Cluster.CreateGroup(ctx, connect.NewRequest(&kvstorev1.CreateGroupRequest{
		Name: "b", Start: []byte("/c/"), End: []byte("/c0"), Replicas: []string{"n2"},
	}))
	wantCode(t, "a second group named b", err, connect.CodeAlreadyExists)

	for i, nd := range c.Nodes() {
		for _, prefix := range []string{"/a/", "/b/"} {
			key := fmt.Sprintf("%s%d", prefix, i)
			resp, err := put(ctx, nd.Client().KV, key, nd.Name())
			if err != nil {
				t.Fatalf("put %s through %s: %v", key, nd.Name(), err)
			}
			wantGroup := uint64(0)
			if prefix == "/b/" {
				wantGroup = g.GetId()
			}
			if got := resp.GetHeader().GetGroup(); got != wantGroup {
				t.Fatalf("put %s: header names group %d, want %d", key, got, wantGroup)
			}
		}
	}
	for _, nd := range c.Nodes() {
		for i := range c.Nodes() {
			for _, prefix := range []string{"/a/", "/b/"} {
				key := fmt.Sprintf("%s%d", prefix, i)
				resp, err := get(ctx, nd.Client().KV, key, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
				if err != nil {
					t.Fatalf("get %s through %s: %v", key, nd.Name(), err)
				}
				if want := c.Nodes()[i].Name(); string(resp.GetKv().GetValue()) != want {
					t.Fatalf("get %s through %s: %q, want %q", key, nd.Name(), resp.GetKv().GetValue(), want)
				}
			}
		}
	}
	// Each group holds its own keys only.
	rng, err := n1.Client().KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("/b/"), Prefix: true}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(rng.Msg.GetKvs()); n != 4 || rng.Msg.GetHeader().GetGroup() != g.GetId() {
		t.Fatalf("range /b/ through n1: %d keys in group %d, want 4 in %d", n, rng.Msg.GetHeader().GetGroup(), g.GetId())
	}

	// Refused whole across groups.
	_, err = n1.Client().KV.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{
		{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("/a/x"), Value: []byte("v")}}},
		{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("/b/x"), Value: []byte("v")}}},
	}}))
	wantCode(t, "a txn over two groups", err, connect.CodeFailedPrecondition)
	if !strings.Contains(err.Error(), "(b)") || !strings.Contains(err.Error(), "(meta)") {
		t.Fatalf("the refusal does not name both groups: %v", err)
	}
	_, err = n1.Client().KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("/"), RangeEnd: []byte("0")}))
	wantCode(t, "a range over two groups", err, connect.CodeFailedPrecondition)
	lease, err := n1.Client().Lease.Grant(ctx, connect.NewRequest(&kvstorev1.GrantRequest{TtlSeconds: 60}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = n1.Client().KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("/b/leased"), Value: []byte("v"), Lease: lease.Msg.GetId()}))
	wantCode(t, "a data group's key attached to a lease", err, connect.CodeFailedPrecondition)
	if _, err := n1.Client().KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("/a/leased"), Value: []byte("v"), Lease: lease.Msg.GetId()})); err != nil {
		t.Fatalf("a meta group's key attached to a lease: %v", err)
	}
	for _, nd := range c.Nodes() {
		resp, err := get(ctx, nd.Client().KV, "/a/x", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("the refused txn's /a/x on %s: %v %v", nd.Name(), resp, err)
		}
	}

	// A watch is served by a node hosting the group, refused elsewhere.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := c.Node("n2").Client().Watch(wctx, &kvstorev1.WatchRequest{Key: []byte("/b/"), Prefix: true})
	defer st.Close()
	if !st.Receive() {
		t.Fatalf("watch through n2: %v", st.Err())
	}
	if _, err := put(ctx, n1.Client().KV, "/b/w", "watched"); err != nil {
		t.Fatal(err)
	}
	if !st.Receive() || len(st.Msg().GetEvents()) != 1 || string(st.Msg().GetEvents()[0].GetKv().GetKey()) != "/b/w" {
		t.Fatalf("watch through n2: %v %v", st.Msg(), st.Err())
	}
	if st.Msg().GetHeader().GetGroup() != g.GetId() {
		t.Fatalf("watch header names group %d", st.Msg().GetHeader().GetGroup())
	}
	st1 := n1.Client().Watch(wctx, &kvstorev1.WatchRequest{Key: []byte("/b/"), Prefix: true})
	defer st1.Close()
	for st1.Receive() {
	}
	err = st1.Err()
	wantCode(t, "a watch of group b through n1", err, connect.CodeFailedPrecondition)

	// The list shows both groups; n2 hosts b and knows its leader.
	list, err := c.Node("n2").Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if gs := list.Msg.GetGroups(); len(gs) != 2 || gs[1].GetName() != "b" || gs[1].GetLeader() == "" || gs[1].GetKeys() != 5 {
		t.Fatalf("group list through n2: %v", gs)
	}
	// n1 hosts no replica of b: it asks one.
	list, err = n1.Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if gs := list.Msg.GetGroups(); len(gs) != 2 || gs[1].GetLeader() == "" || gs[1].GetKeys() != 5 || gs[0].GetLeader() == "" {
		t.Fatalf("group list through n1: %v", gs)
	}
}

// TestGroupCreateWaitsOutMetaElection kills the meta leader and at once
// creates a group through a follower, which still names the dead leader:
// the request waits for the next leader, as a write does, rather than
// fail.
func TestGroupCreateWaitsOutMetaElection(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 3)
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var survivors []string
	for _, nd := range c.Nodes() {
		if nd != leader {
			survivors = append(survivors, nd.Name())
		}
	}
	via := c.Node(survivors[0])
	leader.Kill()
	g := createGroup(t, ctx, via, "b", "/b/", survivors...)
	if _, err := put(ctx, via.Client().KV, "/b/1", "v"); err != nil {
		t.Fatalf("put into group %d: %v", g.GetId(), err)
	}
}

// TestGroupSurvivesItsLeaderAndRestarts kills the leader of a data group
// and restarts a replica: writes through a node outside the group go on,
// and nothing acknowledged is lost.
func TestGroupSurvivesItsLeaderAndRestarts(t *testing.T) {
	ctx := testCtx(t, 150*time.Second)
	c := nodetest.NewCluster(t, 4)
	n1 := c.Node("n1")
	g := createGroup(t, ctx, n1, "b", "/b/", "n2", "n3", "n4")
	acked := map[string]string{}
	kv := n1.Client().KV
	write := func(key string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := put(ctx, kv, key, key)
			if err == nil {
				acked[key] = key
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("put %s through n1: %v", key, err)
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
	}
	for i := range 10 {
		write(fmt.Sprintf("/b/before/%d", i))
	}
	list, err := c.Node("n2").Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	leader := list.Msg.GetGroups()[1].GetLeader()
	if leader == "" || leader == "n1" {
		t.Fatalf("group %d's leader is %q", g.GetId(), leader)
	}
	c.Node(leader).Kill()
	for i := range 10 {
		write(fmt.Sprintf("/b/after-kill/%d", i))
	}
	if err := c.Node(leader).Restart(ctx); err != nil {
		t.Fatalf("restart %s: %v", leader, err)
	}
	for i := range 10 {
		write(fmt.Sprintf("/b/after-restart/%d", i))
	}
	// Every node reads every acknowledged write, the restarted one
	// included once it caught up.
	for _, nd := range c.Nodes() {
		for key := range acked {
			var resp *kvstorev1.GetResponse
			deadline := time.Now().Add(30 * time.Second)
			for {
				resp, err = get(ctx, nd.Client().KV, key, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
				if err == nil || time.Now().After(deadline) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
					break
				}
				time.Sleep(20 * time.Millisecond) // poll interval
			}
			if err != nil || string(resp.GetKv().GetValue()) != key {
				t.Fatalf("get %s through %s: %v %v", key, nd.Name(), resp, err)
			}
		}
	}
}

// TestGroupLeadersSpread puts the leaders of the meta group and of a data
// group on one node; that node hands the data group's leadership over.
func TestGroupLeadersSpread(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3)
	n1 := c.Node("n1")
	createGroup(t, ctx, n1, "b", "/b/", "n1", "n2", "n3")
	leaders := func() (meta, b string) {
		list, err := n1.Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
		if err != nil {
			return "", ""
		}
		gs := list.Msg.GetGroups()
		return gs[0].GetLeader(), gs[1].GetLeader()
	}
	// Move the meta group's leadership onto the data group's leader.
	for {
		meta, b := leaders()
		if meta != "" && meta == b {
			break
		}
		if b != "" {
			n1.Client().Cluster.TransferLeadership(ctx, connect.NewRequest(&kvstorev1.TransferLeadershipRequest{Id: b}))
		}
		if ctx.Err() != nil {
			t.Fatalf("could not put both leaders on one node: meta %q, b %q", meta, b)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	for {
		meta, b := leaders()
		if meta != "" && b != "" && meta != b {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the leaders stayed together: meta %q, b %q", meta, b)
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
}

// TestGroupMoveUnderLoad moves a data group from n1..n3 to n3..n5 while
// clients write to it through every node: every acknowledged write is
// on the new nodes, and the old nodes deleted their replicas.
func TestGroupMoveUnderLoad(t *testing.T) {
	ctx := testCtx(t, 150*time.Second)
	c := nodetest.NewCluster(t, 5)
	n1 := c.Node("n1")
	g := createGroup(t, ctx, n1, "b", "/b/", "n1", "n2", "n3")

	wctx, stop := context.WithCancel(ctx)
	var (
		mu      sync.Mutex
		acked   = map[string]bool{}
		written atomic.Int64
		wg      sync.WaitGroup
	)
	for i, nd := range c.Nodes() {
		kv := nd.Client().KV
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; wctx.Err() == nil; j++ {
				key := fmt.Sprintf("/b/%d/%d", i, j)
				if _, err := put(wctx, kv, key, key); err == nil {
					mu.Lock()
					acked[key] = true
					mu.Unlock()
					written.Add(1)
				}
			}
		}()
	}
	for written.Load() < 50 {
		if ctx.Err() != nil {
			t.Fatal("no writes before the move")
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	resp, err := c.Node("n2").Client().Cluster.MoveGroup(ctx, connect.NewRequest(&kvstorev1.MoveGroupRequest{Name: "b", Replicas: []string{"n3", "n4", "n5"}}))
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	if v := resp.Msg.GetGroup().GetVoters(); !slices.Equal(v, []string{"n3", "n4", "n5"}) {
		t.Fatalf("moved to %v", v)
	}
	before := written.Load()
	for written.Load() < before+50 {
		if ctx.Err() != nil {
			t.Fatal("no writes after the move")
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	stop()
	wg.Wait()
	for _, name := range []string{"n1", "n2"} {
		dir := filepath.Join(c.Node(name).Dir(), "groups", strconv.FormatUint(g.GetId(), 10))
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, err := os.Stat(dir); os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still has %s", name, dir)
			}
			time.Sleep(50 * time.Millisecond) // poll interval
		}
	}
	for _, name := range []string{"n3", "n4", "n5"} {
		kv := c.Node(name).Client().KV
		rng, err := kv.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("/b/"), Prefix: true, CountOnly: true,
			Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s holds %d keys of group b; %d writes acknowledged", name, rng.Msg.GetCount(), len(acked))
	}
	for key := range acked {
		resp, err := get(ctx, c.Node("n4").Client().KV, key, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
		if err != nil || string(resp.GetKv().GetValue()) != key {
			t.Fatalf("acknowledged %s: %v %v", key, resp, err)
		}
	}
}

// TestGroupReplacesAGoneNode kills a replica of a data group for good:
// once the cluster removes the node, the group moves to a node that did
// not host it, and keeps every acknowledged write.
func TestGroupReplacesAGoneNode(t *testing.T) {
	ctx := testCtx(t, 150*time.Second)
	c := nodetest.NewCluster(t, 4, nodetest.WithConfig(func(_ string, cfg *node.Config) { cfg.DeadAfter = 2 * time.Second }))
	n1 := c.Node("n1")
	createGroup(t, ctx, n1, "b", "/b/", "n2", "n3", "n4")
	for i := range 20 {
		if _, err := put(ctx, n1.Client().KV, fmt.Sprintf("/b/%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	c.Node("n4").Kill()
	for {
		list, err := n1.Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
		if err == nil {
			if g := list.Msg.GetGroups()[1]; slices.Equal(g.GetVoters(), []string{"n1", "n2", "n3"}) && len(g.GetNonVoters()) == 0 {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("group b did not move off n4: %v %v", list, err)
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	// n1 now holds every write, and takes new ones.
	rng, err := n1.Client().KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("/b/"), Prefix: true, CountOnly: true}))
	if err != nil || rng.Msg.GetCount() != 20 {
		t.Fatalf("group b after the move: %v %v", rng, err)
	}
	if _, err := put(ctx, n1.Client().KV, "/b/after", "v"); err != nil {
		t.Fatal(err)
	}
}

// TestGroupReadThroughNodeThatMissedTheCreate restarts a node that was
// down when a group was created and reads the group's key through it at
// once: the node routes with its old table to the meta group, which must
// refuse the read of a key it no longer owns (the router then routes
// again), not answer that the key is missing.
func TestGroupReadThroughNodeThatMissedTheCreate(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 4)
	n1, n2 := c.Node("n1"), c.Node("n2")
	n1.Kill()
	id, err := createGroupRetrying(ctx, c, "g", "/g/", "/g0", []string{"n2", "n3", "n4"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := put(ctx, n2.Client().KV, "/g/k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := n1.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := get(ctx, n1.Client().KV, "/g/k", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
		if connect.CodeOf(err) == connect.CodeUnavailable && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond) // poll interval
			continue
		}
		if err != nil {
			t.Fatalf("get /g/k through n1 right after its restart: %v", err)
		}
		if string(resp.GetKv().GetValue()) != "v" || resp.GetHeader().GetGroup() != id {
			t.Fatalf("get /g/k through n1: %q in group %d, want \"v\" in %d", resp.GetKv().GetValue(), resp.GetHeader().GetGroup(), id)
		}
		return
	}
}

// TestGroupCreatedOverKeys gives a range that holds keys to a new group:
// the keys keep their revisions and history in it, writes to the range
// go on through every node, and a watch of the range follows it.
func TestGroupCreatedOverKeys(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 4)
	n1, n2 := c.Node("n1"), c.Node("n2")
	revs := map[string]int64{}
	for i := range 100 {
		key := fmt.Sprintf("/c/%03d", i)
		resp, err := put(ctx, n1.Client().KV, key, "before")
		if err != nil {
			t.Fatal(err)
		}
		revs[key] = resp.GetHeader().GetRevision()
	}
	last := revs["/c/099"]
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := n2.Client().Watch(wctx, &kvstorev1.WatchRequest{Key: []byte("/c/"), Prefix: true, StartRevision: last})
	defer w.Close()
	events := func() []*kvstorev1.Event {
		t.Helper()
		for w.Receive() {
			if evs := w.Msg().GetEvents(); len(evs) > 0 {
				return evs
			}
		}
		t.Fatalf("the watch ended: %v", w.Err())
		return nil
	}
	if evs := events(); len(evs) != 1 || evs[0].GetKv().GetModRevision() != last {
		t.Fatalf("watch from revision %d: %v", last, evs)
	}

	g := createGroup(t, ctx, n1, "c", "/c/", "n2", "n3", "n4")
	if len(g.GetRanges()) != 1 || string(g.GetRanges()[0].GetStart()) != "/c/" {
		t.Fatalf("created %v", g)
	}
	for _, nd := range c.Nodes() {
		for _, key := range []string{"/c/000", "/c/050", "/c/099"} {
			resp, err := get(ctx, nd.Client().KV, key, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
			if err != nil {
				t.Fatalf("get %s through %s: %v", key, nd.Name(), err)
			}
			if resp.GetHeader().GetGroup() != g.GetId() || resp.GetKv().GetModRevision() != revs[key] || string(resp.GetKv().GetValue()) != "before" {
				t.Fatalf("get %s through %s: %v, want mod revision %d in group %d", key, nd.Name(), resp, revs[key], g.GetId())
			}
		}
	}
	after, err := put(ctx, n1.Client().KV, "/c/new", "after")
	if err != nil {
		t.Fatal(err)
	}
	if after.GetHeader().GetGroup() != g.GetId() || after.GetHeader().GetRevision() <= last {
		t.Fatalf("a write after the create: %v, want group %d past revision %d", after.GetHeader(), g.GetId(), last)
	}
	rng, err := n1.Client().KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("/c/"), Prefix: true, CountOnly: true}))
	if err != nil || rng.Msg.GetCount() != 101 {
		t.Fatalf("range /c/ after the create: %v %v", rng, err)
	}
	// The watch, started on the meta group, resumed on the new group.
	if evs := events(); len(evs) != 1 || string(evs[0].GetKv().GetKey()) != "/c/new" || w.Msg().GetHeader().GetGroup() != g.GetId() {
		t.Fatalf("the watch after the create: %v", w.Msg())
	}
	// The meta group's copy is no longer served: a write there would be
	// refused, and the range is the new group's alone.
	list, err := n1.Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if gs := list.Msg.GetGroups(); len(gs) != 2 || gs[1].GetKeys() != 101 {
		t.Fatalf("groups: %v", gs)
	}
}

// TestLeavingNodeDrainsItsGroups stops a node gracefully, as SIGTERM and
// scaling down do: before it leaves, its data group moves to a node that
// did not host it, keeping every write.
func TestLeavingNodeDrainsItsGroups(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 4)
	n1 := c.Node("n1")
	createGroup(t, ctx, n1, "b", "/b/", "n2", "n3", "n4")
	for i := range 20 {
		if _, err := put(ctx, n1.Client().KV, fmt.Sprintf("/b/%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Node("n4").Stop(ctx); err != nil {
		t.Fatalf("stop n4: %v", err)
	}
	list, err := n1.Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if g := list.Msg.GetGroups()[1]; !slices.Equal(g.GetVoters(), []string{"n1", "n2", "n3"}) || g.GetKeys() != 20 {
		t.Fatalf("group b after n4 left: %v", g)
	}
}

// TestGroupCreateOverLeasedKeysAborts: a key attached to a lease stays in
// the meta group, so a create over it is aborted and the range stays
// the meta group's, writable again.
func TestGroupCreateOverLeasedKeysAborts(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	c := nodetest.NewCluster(t, 3)
	n1 := c.Node("n1")
	lease, err := n1.Client().Lease.Grant(ctx, connect.NewRequest(&kvstorev1.GrantRequest{TtlSeconds: 60}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Client().KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("/l/1"), Value: []byte("v"), Lease: lease.Msg.GetId()})); err != nil {
		t.Fatal(err)
	}
	_, err = n1.Client().Cluster.CreateGroup(ctx, connect.NewRequest(&kvstorev1.CreateGroupRequest{
		Name: "l", Start: []byte("/l/"), End: []byte("/l0"), Replicas: []string{"n1", "n2", "n3"},
	}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "aborted") {
		t.Fatalf("create over a leased key: %v, want the create aborted", err)
	}
	list, err := n1.Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
	if err != nil || len(list.Msg.GetGroups()) != 1 {
		t.Fatalf("groups after the abort: %v %v", list, err)
	}
	if _, err := put(ctx, n1.Client().KV, "/l/2", "v"); err != nil {
		t.Fatalf("a write to the range after the abort: %v", err)
	}
}
