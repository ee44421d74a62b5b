package raftlog

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// indexFSM records the index of every entry applied, and the index of the
// snapshot it was restored from.
type indexFSM struct {
	mu       sync.Mutex
	restored uint64
	applied  []uint64
}

func (f *indexFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, l.Index)
	return nil
}

// last returns the index of the last entry applied, or the snapshot's.
func (f *indexFSM) last() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.applied); n > 0 {
		return f.applied[n-1]
	}
	return f.restored
}

func (f *indexFSM) Snapshot() (raft.FSMSnapshot, error) {
	return nil, fmt.Errorf("indexFSM takes no snapshots")
}

func (f *indexFSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	var idx uint64
	if _, err := fmt.Sscan(string(b), &idx); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restored, f.applied = idx, nil
	return nil
}

// fakeLeader plays a leader, over raft's in-memory transport, against a
// raft follower whose log is the node's: a Cache over a Store.
type fakeLeader struct {
	t        *testing.T
	s        *Store
	fsm      *indexFSM
	trans    *raft.InmemTransport
	follower raft.ServerAddress
	header   raft.RPCHeader
	servers  raft.Configuration
}

func newFakeLeader(t *testing.T) *fakeLeader {
	s := openStore(t, t.TempDir(), testOptions(t))
	leaderAddr, leaderTrans := raft.NewInmemTransport("leader")
	followerAddr, followerTrans := raft.NewInmemTransport("follower")
	leaderTrans.Connect(followerAddr, followerTrans)
	followerTrans.Connect(leaderAddr, leaderTrans)

	conf := raft.DefaultConfig()
	conf.LocalID = "follower"
	conf.Logger = nil
	conf.LogOutput = ioDiscard{}
	fsm := &indexFSM{}
	r, err := raft.NewRaft(conf, fsm, NewCache(s, 1<<20), s, raft.NewInmemSnapshotStore(), followerTrans)
	if err != nil {
		t.Fatalf("NewRaft: %v", err)
	}
	t.Cleanup(func() { r.Shutdown().Error() })
	return &fakeLeader{
		t: t, s: s, fsm: fsm, trans: leaderTrans, follower: followerAddr,
		header: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("leader"), Addr: leaderTrans.EncodePeer("leader", leaderAddr)},
		// The follower is a non-voter: it never stands for election.
		servers: raft.Configuration{Servers: []raft.Server{
			{Suffrage: raft.Voter, ID: "leader", Address: leaderAddr},
			{Suffrage: raft.Nonvoter, ID: "follower", Address: followerAddr},
		}},
	}
}

// appendEntries sends the entries [from, to] of term 1 after prev, with
// the leader's commit index commit, and fails the test unless they are
// taken.
func (l *fakeLeader) appendEntries(prev, from, to, commit uint64) {
	l.t.Helper()
	req := &raft.AppendEntriesRequest{RPCHeader: l.header, Term: 1, PrevLogEntry: prev, LeaderCommitIndex: commit}
	if prev > 0 {
		req.PrevLogTerm = 1
	}
	for i := from; i <= to; i++ {
		req.Entries = append(req.Entries, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: fmt.Appendf(nil, "entry %d", i)})
	}
	var resp raft.AppendEntriesResponse
	if err := l.trans.AppendEntries("follower", l.follower, req, &resp); err != nil {
		l.t.Fatalf("AppendEntries %d-%d: %v", from, to, err)
	}
	if !resp.Success {
		l.t.Fatalf("AppendEntries %d-%d after %d refused: %+v", from, to, prev, resp)
	}
}

// installSnapshot sends a snapshot of the entries up to index, term 1.
func (l *fakeLeader) installSnapshot(index uint64) {
	l.t.Helper()
	data := fmt.Appendf(nil, "%d", index)
	req := &raft.InstallSnapshotRequest{
		RPCHeader: l.header, SnapshotVersion: raft.SnapshotVersionMax, Term: 1,
		LastLogIndex: index, LastLogTerm: 1, Size: int64(len(data)),
		Configuration: raft.EncodeConfiguration(l.servers), ConfigurationIndex: 1,
	}
	var resp raft.InstallSnapshotResponse
	if err := l.trans.InstallSnapshot("follower", l.follower, req, &resp, bytes.NewReader(data)); err != nil {
		l.t.Fatalf("InstallSnapshot: %v", err)
	}
	if !resp.Success {
		l.t.Fatalf("InstallSnapshot refused: %+v", resp)
	}
}

// waitApplied waits until the follower has applied index, for up to 10s.
func (l *fakeLeader) waitApplied(index uint64) {
	l.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for l.fsm.last() < index {
		if time.Now().After(deadline) {
			l.t.Fatalf("applied up to %d within 10s, want %d", l.fsm.last(), index)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkApplied checks the indexes applied since the last snapshot.
func (l *fakeLeader) checkApplied(want ...uint64) {
	l.t.Helper()
	l.fsm.mu.Lock()
	defer l.fsm.mu.Unlock()
	if fmt.Sprint(l.fsm.applied) != fmt.Sprint(want) {
		l.t.Fatalf("applied after the snapshot: %v, want %v", l.fsm.applied, want)
	}
}

// TestSnapshotBelowLastKeepsLaterEntries: the follower holds entries
// 1-10, has applied 1-5, and installs a snapshot at 7 (a leader sends one
// when it takes the follower to be behind, after a restart or a leader
// change). hashicorp/raft v1.8.0 keeps its last log index (10) after the
// install, so it must find 8-10 in the log when the commit index passes
// them. On a raft.MonotonicLogStore it deletes the whole log after the
// install instead, and then panics with "log not found" applying 8
// (hashicorp/raft#697).
func TestSnapshotBelowLastKeepsLaterEntries(t *testing.T) {
	l := newFakeLeader(t)
	l.appendEntries(0, 1, 10, 5)
	l.waitApplied(5)
	l.installSnapshot(7)
	if first, last := mustIndexes(t, l.s); first > 8 || last != 10 {
		t.Fatalf("after a snapshot at 7 the log holds [%d, %d], want 8-10 kept", first, last)
	}
	// The follower's last entry matches the leader's: the leader sends on
	// from there and commits.
	l.appendEntries(10, 11, 12, 12)
	l.waitApplied(12)
	l.checkApplied(8, 9, 10, 11, 12)
}

// TestSnapshotPastLastStartsOver: a snapshot past the end of the log
// leaves raft appending past a gap, which starts the log over.
func TestSnapshotPastLastStartsOver(t *testing.T) {
	l := newFakeLeader(t)
	l.appendEntries(0, 1, 5, 3)
	l.waitApplied(3)
	l.installSnapshot(20)
	l.appendEntries(20, 21, 22, 22)
	l.waitApplied(22)
	l.checkApplied(21, 22)
	if first, last := mustIndexes(t, l.s); first != 21 || last != 22 {
		t.Fatalf("after a snapshot at 20 and entries 21-22 the log holds [%d, %d], want [21, 22]", first, last)
	}
}

func mustIndexes(t *testing.T, s *Store) (first, last uint64) {
	t.Helper()
	first, err := s.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	if last, err = s.LastIndex(); err != nil {
		t.Fatal(err)
	}
	return first, last
}
