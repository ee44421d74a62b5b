package consensus

import (
	"errors"
	"testing"

	"github.com/kvstore/kvstore/consensus/ranges"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

func TestCreateGroupTakesOnlyAnEmptyRange(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	ctx := testCtx(t)
	mustPut(t, r, "/a/1", "x")

	_, err := r.CreateGroup(ctx, &kvstorev1.CreateGroupRequest{Name: "a", Start: []byte("/a/"), End: []byte("/a0"), Replicas: []string{"node-1"}})
	if !errors.Is(err, ErrRangeNotEmpty) {
		t.Fatalf("create over a range with a key: %v, want ErrRangeNotEmpty", err)
	}
	if v := r.RangeTable().Version; v != 1 {
		t.Fatalf("a refused create changed the table to version %d", v)
	}

	resp, err := r.CreateGroup(ctx, &kvstorev1.CreateGroupRequest{Name: "b", Start: []byte("/b/"), End: []byte("/b0"), Replicas: []string{"node-1"}})
	if err != nil {
		t.Fatalf("create over an empty range: %v", err)
	}
	g := resp.GetGroup()
	if g.GetId() == 0 || g.GetName() != "b" || len(g.GetRanges()) != 1 || string(g.GetRanges()[0].GetStart()) != "/b/" {
		t.Fatalf("created %v", g)
	}
	if resp.GetHeader().GetGroup() != 0 {
		t.Fatalf("the create's header names group %d, want the meta group", resp.GetHeader().GetGroup())
	}

	// The meta group refuses writes to the new group's keys, whole.
	for name, call := range map[string]func() error{
		"put": func() error {
			_, err := r.Put(ctx, &kvstorev1.PutRequest{Key: []byte("/b/1"), Value: []byte("v")})
			return err
		},
		"delete over both": func() error {
			_, err := r.Delete(ctx, &kvstorev1.DeleteRequest{Key: []byte("/a/"), RangeEnd: []byte("/c")})
			return err
		},
		"txn over both": func() error {
			_, err := r.Txn(ctx, &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{
				{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("/a/2"), Value: []byte("v")}}},
				{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("/b/2"), Value: []byte("v")}}},
			}})
			return err
		},
	} {
		err := call()
		var wg *WrongGroupError
		if !errors.As(err, &wg) || wg.TableVersion != 2 {
			t.Errorf("%s of the new group's keys in the meta group: %v, want a WrongGroupError at table version 2", name, err)
		}
	}
	got, err := r.Range(ctx, &kvstorev1.RangeRequest{Key: []byte("/"), RangeEnd: []byte("/b/")})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetKvs()) != 1 {
		t.Fatalf("the meta group holds %d keys after refused writes, want the one put before", len(got.GetKvs()))
	}
	// And refuses reads of them: a router with an older table sent them.
	for name, call := range map[string]func() error{
		"get": func() error {
			_, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("/b/1")})
			return err
		},
		"range over both": func() error {
			_, err := r.Range(ctx, &kvstorev1.RangeRequest{Key: []byte("/"), RangeEnd: []byte("0")})
			return err
		},
	} {
		err := call()
		var wg *WrongGroupError
		if !errors.As(err, &wg) || wg.TableVersion != 2 {
			t.Errorf("%s of the new group's keys in the meta group: %v, want a WrongGroupError at table version 2", name, err)
		}
	}
	mustPut(t, r, "/a/3", "still the meta group's")

	// The table is replicated state: it survives a restart.
	stopReplica(t, r)
	r = startReplica(t, st)
	tab := r.RangeTable()
	if id, _ := tab.Lookup([]byte("/b/x")); id != ranges.GroupID(g.GetId()) || tab.Version != 2 {
		t.Fatalf("after a restart /b/x is group %d at version %d, want group %d at 2", id, tab.Version, g.GetId())
	}
}

func TestDataGroupAppliesOnlyItsKeys(t *testing.T) {
	tab, id, err := ranges.New().Create("b", []byte("/b/"), []byte("/b0"), []ranges.NodeID{"node-1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		group ranges.GroupID
		key   string
		ok    bool
	}{
		{id, "/b/1", true},
		{id, "/a/1", false},
		{ranges.MetaID, "/a/1", true},
		{ranges.MetaID, "/b/1", false},
	} {
		err := checkOwner(c.group, tab, &kvstorev1.PutRequest{Key: []byte(c.key)})
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrWrongGroup)) {
			t.Errorf("group %d put %s: %v, want ok=%v", c.group, c.key, err, c.ok)
		}
	}
	if err := checkOwner(ranges.MetaID, nil, &kvstorev1.PutRequest{Key: []byte("/b/1")}); err != nil {
		t.Errorf("with no table: %v", err)
	}
}
