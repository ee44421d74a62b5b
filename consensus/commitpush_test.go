package consensus

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// recordingTransport answers appends as a follower would (or fails them)
// and records them.
type recordingTransport struct {
	*raft.InmemTransport
	mu   sync.Mutex
	sent []raft.AppendEntriesRequest
	fail error
}

func (r *recordingTransport) AppendEntries(_ raft.ServerID, _ raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.sent = append(r.sent, *args)
	*resp = raft.AppendEntriesResponse{Term: args.Term, Success: true}
	return nil
}

func (r *recordingTransport) take() []raft.AppendEntriesRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sent
	r.sent = nil
	return s
}

// TestPushCommitIndex: the leader pushes a commit index no further than
// the entry the follower last confirmed, only while it leads and nothing
// newer is on its way, not to a follower that knows it, and after a
// failed RPC only once a heartbeat gets through again.
func TestPushCommitIndex(t *testing.T) {
	_, inmem := raft.NewInmemTransport("")
	rec := &recordingTransport{InmemTransport: inmem}
	p := newPushTransport(rec)
	if p == nil {
		t.Fatal("no pusher over a transport with prevote and close")
	}
	var mu sync.Mutex
	leader, term, commit, last := true, uint64(3), uint64(0), uint64(0)
	p.state = func() (bool, uint64, uint64, uint64) {
		mu.Lock()
		defer mu.Unlock()
		return leader, term, commit, last
	}
	set := func(l bool, c, n uint64) {
		mu.Lock()
		leader, commit, last = l, c, n
		mu.Unlock()
	}
	setTerm := func(tm uint64) {
		mu.Lock()
		term = tm
		mu.Unlock()
	}
	const id, addr = raft.ServerID("f"), raft.ServerAddress("f")
	raftSend := func(req *raft.AppendEntriesRequest) {
		t.Helper()
		var resp raft.AppendEntriesResponse
		if err := p.AppendEntries(id, addr, req, &resp); err != nil && rec.fail == nil {
			t.Fatal(err)
		}
		rec.take()
	}
	// pushed kicks and returns what was pushed once the pushes are done.
	pushed := func() []raft.AppendEntriesRequest {
		t.Helper()
		p.kick()
		deadline := time.Now().Add(5 * time.Second)
		for {
			p.mu.Lock()
			busy := p.peers[id] != nil && p.peers[id].busy
			p.mu.Unlock()
			if !busy {
				return rec.take()
			}
			if time.Now().After(deadline) {
				t.Fatal("push still under way")
			}
			time.Sleep(time.Millisecond)
		}
	}
	want := func(what string, got []raft.AppendEntriesRequest, commits ...uint64) {
		t.Helper()
		if len(got) != len(commits) {
			t.Fatalf("%s: pushed %d appends, want %d: %+v", what, len(got), len(commits), got)
		}
		for i, r := range got {
			if r.LeaderCommitIndex != commits[i] || len(r.Entries) != 0 || r.Term != 3 || r.PrevLogEntry != 10 || r.PrevLogTerm != 2 {
				t.Fatalf("%s: push %d is %+v, want prev 10 (term 2), commit %d, term 3, no entries", what, i, r, commits[i])
			}
		}
	}

	// Raft's append of entries 9 and 10 (term 2) with commit 8.
	raftSend(&raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 8, PrevLogTerm: 2, LeaderCommitIndex: 8,
		Entries: []*raft.Log{{Index: 9, Term: 2}, {Index: 10, Term: 2}}})
	set(true, 8, 10)
	want("entries 9 and 10 not committed yet", pushed())
	set(true, 10, 12)
	want("entries 11 and 12 on their way", pushed())
	set(false, 12, 12)
	want("not leading", pushed())
	set(true, 12, 12)
	// Leading again in a later term, before raft's first append of it
	// got an answer: the follower's entry was confirmed in term 3, and a
	// leader between may have rewritten this node's log up to it.
	setTerm(5)
	want("leading in a later term than the follower's confirmation", pushed())
	setTerm(3)
	want("commit past the follower's last confirmed entry", pushed(), 10)
	want("the follower knows it", pushed())

	// A failed RPC: what the follower knows is unsure, but a push waits
	// for raft's next heartbeat to get through.
	rec.fail = errors.New("connection reset")
	raftSend(&raft.AppendEntriesRequest{Term: 3, Leader: []byte("l")})
	want("while it fails", pushed())
	rec.fail = nil
	var resp raft.AppendEntriesResponse
	if err := p.AppendEntries(id, addr, &raft.AppendEntriesRequest{Term: 3, Leader: []byte("l")}, &resp); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var got []raft.AppendEntriesRequest
	for len(got) < 2 && time.Now().Before(deadline) {
		got = append(got, rec.take()...)
		time.Sleep(time.Millisecond)
	}
	if len(got) != 2 || got[0].PrevLogEntry != 0 {
		t.Fatalf("after the heartbeat: %+v, want it and one push", got)
	}
	want("after the heartbeat", got[1:], 10)

	// A later term: nothing is known of the follower until raft's
	// appends of that term.
	raftSend(&raft.AppendEntriesRequest{Term: 4, Leader: []byte("l")})
	want("a new term", pushed())
}

// TestFollowersLearnCommitsAtOnce: followers apply the last write of a
// burst without raft's idle append, which here comes only after an hour:
// the pushes alone tell them it committed.
func TestFollowersLearnCommitsAtOnce(t *testing.T) {
	defer func(d time.Duration) { pushedCommitTimeout = d }(pushedCommitTimeout)
	pushedCommitTimeout = time.Hour
	reps := startGroup(t, 3)
	leader := reps[0]
	for i := range 5 {
		rev := uint64(mustPut(t, leader, fmt.Sprintf("k%d", i), "v").GetHeader().GetRevision())
		for _, f := range reps[1:] {
			waitFor(t, f.id+" to apply", func() bool { return f.kv.AppliedIndex() >= rev })
		}
	}
}
