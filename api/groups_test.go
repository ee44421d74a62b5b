package api

import (
	"context"
	"testing"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus/ranges"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// fakeGroups is a node that hosts no data group.
type fakeGroups struct{ t *ranges.Table }

func (f fakeGroups) Table() *ranges.Table                        { return f.t }
func (f fakeGroups) WaitTable(context.Context, uint64) error     { return nil }
func (f fakeGroups) Replica(ranges.GroupID) (GroupReplica, bool) { return nil, false }
func (f fakeGroups) Addr(id string) string                       { return id + ":7379" }

// TestRoutedLearnsGroupLeader: a write to a group this node does not host
// goes to the node that served the last one, not to each voter in turn.
func TestRoutedLearnsGroupLeader(t *testing.T) {
	tab, id, err := ranges.New().Create("b", []byte("/b/"), []byte("/b0"), []ranges.NodeID{"n1", "n2", "n3"})
	if err != nil {
		t.Fatal(err)
	}
	s := &kvService{groups: newGroupRoutes(fakeGroups{tab}, router{})}
	req := &kvstorev1.PutRequest{Key: []byte("/b/1")}
	_, err = routed(context.Background(), s, req, func(st Store, _ *router) (*connect.Response[kvstorev1.PutResponse], error) {
		if _, remote := st.(remoteGroup); !remote {
			t.Fatalf("a group hosted elsewhere routed to %T", st)
		}
		return connect.NewResponse(&kvstorev1.PutResponse{Header: &kvstorev1.ResponseHeader{Group: uint64(id), NodeId: "n2"}}), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_, rt, err := s.groups.target(req)
		if err != nil {
			t.Fatal(err)
		}
		if got, addr := rt.leader(); got != "n2" || addr != "n2:7379" {
			t.Fatalf("the first try goes to %s at %s, want the node that served the last write, n2", got, addr)
		}
	}
	// The meta group's keys take the node's own path.
	if st, _, err := s.groups.target(&kvstorev1.PutRequest{Key: []byte("/a/1")}); st != nil || err != nil {
		t.Fatalf("a meta key routed to %T, %v", st, err)
	}
	_, _, err = s.groups.target(&kvstorev1.DeleteRequest{Key: []byte("/a"), RangeEnd: []byte("/c")})
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("a delete over two groups: %v", err)
	}
}

func (f fakeGroups) TableChanged() context.Context { return context.Background() }
