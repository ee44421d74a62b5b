package node

import (
	"testing"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/membership"
)

func member(id, clusterID string, state bool) membership.Member {
	return membership.Member{ID: id, Meta: membership.Meta{ID: id, Addr: id + ":7379", ClusterID: clusterID, HasRaftState: state}}
}

// TestBootstrapClusterID: the servers that bootstrap a cluster together
// agree on its id: the first makes it, the others wait for it, and servers
// that name two refuse to start.
func TestBootstrapClusterID(t *testing.T) {
	for _, tc := range []struct {
		name    string
		chosen  []membership.Member
		self    string
		selfID  string
		want    string
		wantErr bool
	}{
		{"first makes it", []membership.Member{member("a", "", false), member("b", "", false)}, "a", "", "", false},
		{"others wait", []membership.Member{member("a", "", false), member("b", "", false)}, "b", "", "", true},
		{"others take the first's", []membership.Member{member("a", idX, false), member("b", "", false)}, "b", "", idX, false},
		{"self's own, not yet gossiped", []membership.Member{member("a", "", false), member("b", "", false)}, "b", idX, idX, false},
		{"two ids", []membership.Member{member("a", idX, false), member("b", "", false)}, "b", idY, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := bootstrapClusterID(tc.chosen, tc.self, tc.selfID)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Fatalf("bootstrapClusterID = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestStranger: which gossip members the reconcile loop never adds.
func TestStranger(t *testing.T) {
	servers := map[string]raft.Server{"m": {ID: "m", Address: "m:7379"}}
	for _, tc := range []struct {
		m        membership.Member
		stranger bool
	}{
		{member("p", idX, true), false},
		{member("p", idY, true), true},
		{member("p", idY, false), true},
		{member("p", "", false), false}, // fresh: to be added
		{member("p", "", true), true},   // state from before ids, not ours
		{member("m", "", true), false},  // ours, from before ids
		{membership.Member{ID: "m", Meta: membership.Meta{ID: "m", Addr: "other:7379", HasRaftState: true}}, true},
	} {
		if got := stranger(tc.m, idX, servers) != ""; got != tc.stranger {
			t.Errorf("stranger(%+v) = %v, want %v", tc.m.Meta, got, tc.stranger)
		}
	}
}
