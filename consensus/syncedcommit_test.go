package consensus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Followers hear of a commit index no higher than the leader's synced
// index, by a plain append and by a pipelined one; raft's own request is
// left as it was.
func TestSyncedCommitTransportCapsCommitIndex(t *testing.T) {
	_, leaderTrans := raft.NewInmemTransport("leader")
	followerAddr, followerTrans := raft.NewInmemTransport("follower")
	leaderTrans.Connect(followerAddr, followerTrans)
	t.Cleanup(func() { leaderTrans.Close(); followerTrans.Close() })
	trans := &syncedCommitTransport{Transport: leaderTrans, synced: func() uint64 { return 5 }}

	// received answers one append on the follower and returns its commit
	// index.
	received := func() uint64 {
		t.Helper()
		select {
		case rpc := <-followerTrans.Consumer():
			req, ok := rpc.Command.(*raft.AppendEntriesRequest)
			if !ok {
				t.Fatalf("follower got %T, want an append", rpc.Command)
			}
			rpc.Respond(&raft.AppendEntriesResponse{Success: true}, nil)
			return req.LeaderCommitIndex
		case <-time.After(10 * time.Second):
			t.Fatal("the follower got no append")
			return 0
		}
	}

	for _, tc := range []struct{ commit, want uint64 }{{9, 5}, {5, 5}, {3, 3}} {
		req := &raft.AppendEntriesRequest{Term: 1, LeaderCommitIndex: tc.commit}
		done := make(chan error, 1)
		go func() { done <- trans.AppendEntries("follower", followerAddr, req, &raft.AppendEntriesResponse{}) }()
		if got := received(); got != tc.want {
			t.Errorf("commit %d: follower heard %d, want %d", tc.commit, got, tc.want)
		}
		if err := <-done; err != nil {
			t.Fatalf("AppendEntries: %v", err)
		}
		if req.LeaderCommitIndex != tc.commit {
			t.Errorf("raft's request now says commit %d, want %d untouched", req.LeaderCommitIndex, tc.commit)
		}
	}

	p, err := trans.AppendEntriesPipeline("follower", followerAddr)
	if err != nil {
		t.Fatalf("AppendEntriesPipeline: %v", err)
	}
	defer p.Close()
	if _, err := p.AppendEntries(&raft.AppendEntriesRequest{Term: 1, LeaderCommitIndex: 9}, &raft.AppendEntriesResponse{}); err != nil {
		t.Fatalf("pipelined AppendEntries: %v", err)
	}
	if got := received(); got != 5 {
		t.Errorf("pipelined: follower heard commit %d, want 5", got)
	}
}

// The FSM applies nothing past the raft log's synced index: a leader must
// not answer for an entry before its own copy is on disk.
func TestFSMWaitsForLogSync(t *testing.T) {
	f, kv := newFSM(t, testLimits)
	entered := make(chan uint64, 1)
	release := make(chan error)
	f.logSynced = func(_ context.Context, index uint64) error {
		entered <- index
		return <-release
	}

	done := make(chan []any, 1)
	go func() { done <- f.ApplyBatch([]*raft.Log{cmdLog(t, 1, putCmd("a", "1", false))}) }()
	if got := <-entered; got != 1 {
		t.Fatalf("waited for index %d, want 1", got)
	}
	if got := kv.AppliedIndex(); got != 0 {
		t.Fatalf("applied index %d while the log sync is pending", got)
	}
	release <- nil
	if res := <-done; len(res) != 1 || res[0].(*applyResult).err != nil {
		t.Fatalf("ApplyBatch = %v", res)
	}
	if got := kv.AppliedIndex(); got != 1 {
		t.Fatalf("applied index %d after the sync, want 1", got)
	}

	// A failed sync stops the state machine: applying later entries would
	// leave a gap.
	go func() { done <- f.ApplyBatch([]*raft.Log{cmdLog(t, 2, putCmd("b", "2", false))}) }()
	<-entered
	release <- errors.New("disk on fire")
	res := <-done
	if err := res[0].(*applyResult).err; !errors.Is(err, ErrStateMachineFailed) {
		t.Fatalf("apply after a failed sync = %v, want %v", err, ErrStateMachineFailed)
	}
	if got := kv.AppliedIndex(); got != 1 {
		t.Fatalf("applied index %d after a failed sync, want 1", got)
	}
	if f.Err() == nil {
		t.Fatal("the FSM did not stop after a failed sync")
	}
}
