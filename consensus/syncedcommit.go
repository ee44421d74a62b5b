package consensus

import (
	"context"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// deferringLog is a raft log store that can let the leader's appends
// return before they are synced (storage.RaftStore; see its
// deferredsync.go for why that is safe with what this file adds).
type deferringLog interface {
	// DeferSyncs makes appends made while leading() is true return before
	// they are synced, and reports whether the store can.
	DeferSyncs(leading func() bool) bool
	// SyncedIndex is an index up to which every log is on disk.
	SyncedIndex() uint64
	// WaitSynced waits until every log up to index is on disk.
	WaitSynced(ctx context.Context, index uint64) error
}

// deferLeaderSyncs turns on deferred syncs in cfg.Logs when it can, and
// then returns the transport raft must use and sets what the FSM waits for.
// The returned setRaft must be given the raft instance once it exists:
// until then no append is deferred.
func deferLeaderSyncs(cfg *Config, fsm *FSM) (trans raft.Transport, setRaft func(*raft.Raft)) {
	logs, ok := cfg.Logs.(deferringLog)
	_, preVote := cfg.Transport.(raft.WithPreVote)
	if !ok || !preVote {
		return cfg.Transport, func(*raft.Raft) {}
	}
	var r atomic.Pointer[raft.Raft]
	// raft stores a batch as leader only from its leader loop, which runs
	// in raft's own goroutine after it has set the state to Leader; a
	// leader that steps down sets the state before it stores what the new
	// leader sends. So the state read here is the role the append is for.
	leading := func() bool {
		rf := r.Load()
		return rf != nil && rf.State() == raft.Leader
	}
	if !logs.DeferSyncs(leading) {
		return cfg.Transport, func(*raft.Raft) {}
	}
	fsm.logSynced = logs.WaitSynced
	return &syncedCommitTransport{Transport: cfg.Transport, synced: logs.SyncedIndex}, func(rf *raft.Raft) { r.Store(rf) }
}

// syncedCommitTransport tells followers of a commit index no higher than
// the leader's synced index. Raft counts the leader's own copy of an entry
// when it commits it, and with deferred syncs that copy may not be on disk
// yet: a follower that applied such an entry could serve a read of a write
// that a power loss on the leader then undoes.
type syncedCommitTransport struct {
	raft.Transport
	synced func() uint64
}

// AppendEntries sends args with its commit index capped.
func (t *syncedCommitTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	return t.Transport.AppendEntries(id, target, t.capped(args), resp)
}

// AppendEntriesPipeline returns a pipeline that caps the commit index of
// what it sends.
func (t *syncedCommitTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := t.Transport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return &syncedCommitPipeline{AppendPipeline: p, t: t}, nil
}

// RequestPreVote passes the call on (deferLeaderSyncs checked it can).
func (t *syncedCommitTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.Transport.(raft.WithPreVote).RequestPreVote(id, target, args, resp)
}

// Close closes the transport underneath, if it can be.
func (t *syncedCommitTransport) Close() error {
	if c, ok := t.Transport.(raft.WithClose); ok {
		return c.Close()
	}
	return nil
}

// capped returns args, or a copy of it with the commit index lowered to
// the synced index. A copy: raft reads its request again afterwards.
func (t *syncedCommitTransport) capped(args *raft.AppendEntriesRequest) *raft.AppendEntriesRequest {
	synced := t.synced()
	if args.LeaderCommitIndex <= synced {
		return args
	}
	c := *args
	c.LeaderCommitIndex = synced
	return &c
}

type syncedCommitPipeline struct {
	raft.AppendPipeline
	t *syncedCommitTransport
}

// AppendEntries sends args with its commit index capped.
func (p *syncedCommitPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	return p.AppendPipeline.AppendEntries(p.t.capped(args), resp)
}
