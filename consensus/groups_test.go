package consensus

import (
	"errors"
	"testing"

	"github.com/kvstore/kvstore/consensus/ranges"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

func TestCreateGroup(t *testing.T) {
	st := newReplicaStores(t)
	r := startReplica(t, st)
	ctx := testCtx(t)
	mustPut(t, r, "/a/1", "x")

	// Over keys: the range is frozen at the create's revision, to be
	// switched to the new group or the transfer aborted.
	resp, err := r.CreateGroup(ctx, &kvstorev1.CreateGroupRequest{Name: "a", Start: []byte("/a/"), End: []byte("/a0"), Replicas: []string{"node-1"}})
	if err != nil {
		t.Fatalf("create over a range with a key: %v", err)
	}
	tab := r.RangeTable()
	if len(resp.GetGroup().GetRanges()) != 0 || len(tab.Transfers) != 1 || tab.Transfers[0].Frozen != uint64(resp.GetHeader().GetRevision()) {
		t.Fatalf("create over keys: %v, table %+v", resp, tab)
	}
	_, err = r.Put(ctx, &kvstorev1.PutRequest{Key: []byte("/a/2"), Value: []byte("v")})
	var wg *WrongGroupError
	if !errors.As(err, &wg) || wg.TableVersion != tab.Version+1 {
		t.Fatalf("a put to a frozen range: %v, want a WrongGroupError for the next table", err)
	}
	if _, err := r.Get(ctx, &kvstorev1.GetRequest{Key: []byte("/a/1")}); err != nil {
		t.Fatalf("a read of a frozen range: %v", err)
	}
	if _, err := r.MoveGroup(ctx, &kvstorev1.MoveGroupRequest{Step: &kvstorev1.GroupStep{
		Group: resp.GetGroup().GetId(), Kind: kvstorev1.GroupStepKind_GROUP_STEP_KIND_ABORT, Transfer: tab.Transfers[0].ID}}); err != nil {
		t.Fatalf("abort: %v", err)
	}
	if tab := r.RangeTable(); len(tab.Groups) != 1 || len(tab.Transfers) != 0 || tab.Version != 3 {
		t.Fatalf("after the abort: %+v", tab)
	}
	mustPut(t, r, "/a/2", "the meta group's again")

	resp, err = r.CreateGroup(ctx, &kvstorev1.CreateGroupRequest{Name: "b", Start: []byte("/b/"), End: []byte("/b0"), Replicas: []string{"node-1"}})
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
		wg = nil
		if !errors.As(err, &wg) || wg.TableVersion != 4 {
			t.Errorf("%s of the new group's keys in the meta group: %v, want a WrongGroupError at table version 4", name, err)
		}
	}
	got, err := r.Range(ctx, &kvstorev1.RangeRequest{Key: []byte("/"), RangeEnd: []byte("/b/")})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetKvs()) != 2 {
		t.Fatalf("the meta group holds %d keys after refused writes, want the two put before", len(got.GetKvs()))
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
		wg = nil
		if !errors.As(err, &wg) || wg.TableVersion != 4 {
			t.Errorf("%s of the new group's keys in the meta group: %v, want a WrongGroupError at table version 4", name, err)
		}
	}
	mustPut(t, r, "/a/3", "still the meta group's")

	// The table is replicated state: it survives a restart.
	stopReplica(t, r)
	r = startReplica(t, st)
	tab = r.RangeTable()
	if id, _ := tab.Lookup([]byte("/b/x")); id != ranges.GroupID(g.GetId()) || tab.Version != 4 {
		t.Fatalf("after a restart /b/x is group %d at version %d, want group %d at 4", id, tab.Version, g.GetId())
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
		err := checkOwner(c.group, tab, &kvstorev1.PutRequest{Key: []byte(c.key)}, true)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrWrongGroup)) {
			t.Errorf("group %d put %s: %v, want ok=%v", c.group, c.key, err, c.ok)
		}
	}
	if err := checkOwner(ranges.MetaID, nil, &kvstorev1.PutRequest{Key: []byte("/b/1")}, true); err != nil {
		t.Errorf("with no table: %v", err)
	}
}
