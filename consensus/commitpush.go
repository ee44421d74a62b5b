package consensus

import (
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// pushTransport is the transport raft runs on: the node's, with the leader
// telling followers of a new commit index as soon as it has one.
//
// hashicorp/raft tells a follower what committed only in its next append:
// with no write after an entry, that is the idle append it sends every
// follower every CommitTimeout, at rest too, for nothing most of the time
// (its heartbeats carry no commit index). Here raft's CommitTimeout is
// long, and the leader pushes the commit index itself once an entry is
// applied and no newer one is still on its way: an append with no entries,
// whose previous entry is the last one the follower confirmed to hold as
// the leader does (its last successful append, in the leader's term), and
// whose commit index is at most that entry. Raft could have sent the very
// same append, so a follower cannot tell the two apart; the commit index
// being at most the confirmed entry is what keeps a follower from
// committing entries of its own that the leader does not have.
//
// The pushes stand apart from raft's replication: their answers change
// nothing of raft's state (neither the follower's last contact, which the
// leader's lease counts, nor its next index). A push that fails is
// retried after raft's next heartbeat to that follower gets through;
// a follower that refuses one (it compacted the entry away) is pushed to
// again after raft's next successful append to it.
type pushTransport struct {
	raft.Transport
	// state tells whether this node leads, in which term, its commit
	// index and its last index, all read within that one term; nil until
	// raft runs (setState).
	state func() (leader bool, term, commit, last uint64)

	mu    sync.Mutex
	peers map[raft.ServerID]*pushPeer
	// wg counts pushes under way, for close.
	wg     sync.WaitGroup
	closed bool
}

// pushPeer is what the leader knows of one follower's log.
type pushPeer struct {
	addr raft.ServerAddress
	// term, header and leader are those of raft's last successful append
	// to the follower.
	term   uint64
	header raft.RPCHeader
	leader []byte
	// match and matchTerm are the last entry the follower holds as the
	// leader does, as of that append; 0: none known.
	match, matchTerm uint64
	// known is a commit index the follower knows (it may know a later one).
	known uint64
	// seen is when raft last sent the follower anything: a follower raft
	// no longer replicates to (removed) is forgotten after forgetPeer.
	seen time.Time
	// busy: a push to it is under way. lost: an RPC to it failed, so what
	// it knows is unsure; a push follows raft's next heartbeat answered.
	busy, lost bool
}

// forgetPeer is how long after raft's last RPC to a follower the leader
// stops pushing to it. Raft heartbeats every follower it replicates to
// several times a second.
const forgetPeer = 5 * time.Second

// pushCapable is what the wrapped transport must offer besides raft.Transport:
// what raft asks of the node's (prevote, close).
type pushCapable interface {
	raft.Transport
	raft.WithPreVote
	raft.WithClose
}

// newPushTransport wraps t, or returns nil when t lacks what raft would
// look for on it (then raft runs on t, with its own idle appends).
func newPushTransport(t raft.Transport) *pushTransport {
	if _, ok := t.(pushCapable); !ok {
		return nil
	}
	return &pushTransport{Transport: t, peers: map[raft.ServerID]*pushPeer{}}
}

// setState gives the pusher the raft it serves.
func (p *pushTransport) setState(r *raft.Raft) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = func() (bool, uint64, uint64, uint64) {
		// The same term before and after: the commit index read is
		// this leader's own, not one a later leader set in a log that
		// may no longer hold what the follower confirmed.
		term := r.CurrentTerm()
		leader := r.State() == raft.Leader
		commit, last := r.CommitIndex(), r.LastIndex()
		if r.CurrentTerm() != term {
			return false, 0, 0, 0
		}
		return leader, term, commit, last
	}
}

// RequestPreVote is the wrapped transport's.
func (p *pushTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return p.Transport.(raft.WithPreVote).RequestPreVote(id, target, args, resp)
}

// Close stops pushing, waits for the pushes under way and closes the
// wrapped transport.
func (p *pushTransport) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.Transport.(raft.WithClose).Close()
	p.wg.Wait()
	return err
}

// AppendEntries sends raft's append (or heartbeat) and notes what it tells
// of the follower.
func (p *pushTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := p.Transport.AppendEntries(id, target, args, resp)
	p.observe(id, target, args, resp, err)
	return err
}

// AppendEntriesPipeline refuses: raft then sends each append through
// AppendEntries, where its answer is seen. The node's transport runs
// without a pipeline anyway (node.newRaftTransport).
func (p *pushTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

// InstallSnapshot sends raft's snapshot; the follower's log is the
// snapshot's afterwards, so its confirmed entry is no longer known.
func (p *pushTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	p.mu.Lock()
	if f := p.peers[id]; f != nil {
		f.match, f.matchTerm = 0, 0
	}
	p.mu.Unlock()
	return p.Transport.InstallSnapshot(id, target, args, resp, data)
}

func (p *pushTransport) observe(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for pid, f := range p.peers {
		if now.Sub(f.seen) > forgetPeer && !f.busy {
			delete(p.peers, pid)
		}
	}
	f := p.peers[id]
	if f == nil {
		f = &pushPeer{}
		p.peers[id] = f
	}
	f.addr, f.seen = target, now
	if args.Term < f.term {
		return // a late answer from an earlier term
	}
	if args.Term > f.term {
		*f = pushPeer{addr: target, seen: now, term: args.Term, busy: f.busy}
	}
	if err != nil {
		f.known, f.lost = 0, true
		return
	}
	if resp.Term > args.Term {
		f.match, f.matchTerm = 0, 0
		return
	}
	if args.PrevLogEntry == 0 && len(args.Entries) == 0 && args.LeaderCommitIndex == 0 {
		// A heartbeat: it tells nothing of the log, but that the
		// follower answers again.
		if f.lost {
			f.lost = false
			p.kickLocked(id, f)
		}
		return
	}
	if !resp.Success {
		f.match, f.matchTerm = 0, 0
		return
	}
	f.header, f.leader, f.lost = args.RPCHeader, args.Leader, false
	if n := len(args.Entries); n > 0 {
		f.match, f.matchTerm = args.Entries[n-1].Index, args.Entries[n-1].Term
	} else {
		f.match, f.matchTerm = args.PrevLogEntry, args.PrevLogTerm
	}
	f.known = max(f.known, min(args.LeaderCommitIndex, f.match))
	// The entries may have committed (by other followers' answers)
	// and been applied while this answer was on its way: no later
	// kick may come for them.
	p.kickLocked(id, f)
}

// kick pushes the commit index to every follower that may not know it.
// The FSM calls it after each batch it applies.
func (p *pushTransport) kick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, f := range p.peers {
		p.kickLocked(id, f)
	}
}

func (p *pushTransport) kickLocked(id raft.ServerID, f *pushPeer) {
	if f.busy || p.closed || p.state == nil {
		return
	}
	if _, ok := p.next(f); !ok {
		return
	}
	f.busy = true
	p.wg.Add(1)
	go p.push(id)
}

// next is the push f needs now, if any. Not while entries after the
// commit index are on their way: raft's append of them, or of the next
// ones, carries the commit index, and the push after their commit does.
func (p *pushTransport) next(f *pushPeer) (*raft.AppendEntriesRequest, bool) {
	leader, term, commit, last := p.state()
	to := min(commit, f.match)
	// Only in the term the follower confirmed its entry in: after the node
	// lost leadership and won it back, its log up to that entry may have
	// been rewritten by a leader between, and a follower still in the old
	// term would accept the old term's push and commit what it holds.
	if !leader || term != f.term || f.match == 0 || f.lost || to <= f.known || last > commit {
		return nil, false
	}
	return &raft.AppendEntriesRequest{
		RPCHeader:         f.header,
		Term:              f.term,
		Leader:            f.leader,
		PrevLogEntry:      f.match,
		PrevLogTerm:       f.matchTerm,
		LeaderCommitIndex: to,
	}, true
}

// push sends id pushes until it knows the commit index, or one fails.
func (p *pushTransport) push(id raft.ServerID) {
	defer p.wg.Done()
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		f := p.peers[id]
		if f == nil {
			return
		}
		req, ok := p.next(f)
		if !ok || p.closed {
			f.busy = false
			return
		}
		addr := f.addr
		p.mu.Unlock()
		var resp raft.AppendEntriesResponse
		err := p.Transport.AppendEntries(id, addr, req, &resp)
		p.mu.Lock()
		if f = p.peers[id]; f == nil {
			return
		}
		switch {
		case f.term != req.Term:
			// Raft's appends of a later term took over.
		case err != nil:
			f.known, f.lost = 0, true
		case !resp.Success || resp.Term > req.Term:
			f.match, f.matchTerm = 0, 0
		default:
			f.known = max(f.known, req.LeaderCommitIndex)
			continue
		}
		f.busy = false
		return
	}
}
