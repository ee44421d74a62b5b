package consensus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage"
)

// Rebuilding a corrupt key-value state.
//
// A node whose state is damaged (found as it opens, or by a read or an
// apply while it runs) never serves it. It keeps its raft log and stable
// store as they are: a voter's log and vote are what raft's safety rests
// on, and they are not damaged. Only the state is replaced, by a copy of a
// healthy member's (the peer service's FetchState), at a revision at
// least as far as every batch of entries the state machine handled and as
// the newest raft snapshot: the state machine then skips the entries the
// copy holds, as it does after a restart.
//
// Meanwhile the state machine waits at the gate (raft holds the entries
// back, and a follower that waits stops acknowledging appends, which its
// leader takes for a slow follower), every read, write and watch through
// the node is refused with ErrRebuilding, readiness says from whom the
// state is rebuilt, and a leader hands its office over first.

// ErrRebuilding refuses a request on a node that found its key-value state
// corrupt and rebuilds it from another member.
var ErrRebuilding = errors.New("this node's key-value state is corrupt and being rebuilt; ask another member")

// gate holds the state machine while the store is rebuilt.
type gate struct {
	mu sync.Mutex
	// why says why it is shut ("" when open); open is closed when it
	// opens again.
	why  string
	open chan struct{}
}

func newGate() gate { return gate{} }

// shut closes the gate, saying why; false if it was shut already.
func (g *gate) shut(why string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open != nil {
		return false
	}
	g.why, g.open = why, make(chan struct{})
	return true
}

// say updates why the gate is shut.
func (g *gate) say(why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open != nil {
		g.why = why
	}
}

// reopen lets entries through again.
func (g *gate) reopen() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open != nil {
		close(g.open)
		g.why, g.open = "", nil
	}
}

// state returns why the gate is shut and a channel closed when it opens;
// a nil channel when it is open.
func (g *gate) state() (string, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.why, g.open
}

// serving returns why the state machine cannot serve: it stopped, or it
// waits for its store to be rebuilt.
func (f *FSM) serving() error {
	if err := f.Err(); err != nil {
		return err
	}
	if why, open := f.gate.state(); open != nil {
		return fmt.Errorf("%w: %s", ErrRebuilding, why)
	}
	return nil
}

// StateFetcher streams a copy of the key-value state of the member at addr
// at a revision of at least minRev, and returns it with the revision it is
// at. The reader fails, rather than end, if the copy did not arrive whole.
type StateFetcher func(ctx context.Context, addr string, minRev uint64) (io.ReadCloser, uint64, error)

// rebuildRetry bounds the wait between two tries at a rebuild.
const rebuildRetry = 5 * time.Second

// startRebuild shuts the gate and rebuilds the store in the background;
// reset says the damaged store must be set aside first (it was found
// while running). It does nothing while a rebuild runs.
func (r *Replica) startRebuild(cause error, reset bool) {
	why := fmt.Sprintf("the key-value state is corrupt (%v); waiting for a member to rebuild it from", cause)
	if !r.fsm.gate.shut(why) {
		return
	}
	r.logger.Error("the key-value state is corrupt; this node serves nothing until it is rebuilt from another member",
		"file", storage.CorruptPath(cause), "error", cause)
	if r.onCorrupt != nil {
		r.onCorrupt(cause)
	}
	r.rebuilding.Add(1)
	go r.rebuild(cause, reset)
}

// RebuildState sets this node's key-value state aside and rebuilds it from
// another member, as damage found while it runs does: for a check that
// finds this member's state diverging from the others'. It returns at
// once; Ready says how the rebuild goes.
func (r *Replica) RebuildState(cause error) { r.startRebuild(cause, true) }

func (r *Replica) rebuild(cause error, reset bool) {
	defer r.rebuilding.Done()
	start := time.Now()
	ctx, cancel := r.stopContext()
	defer cancel()
	if r.raft.State() == raft.Leader {
		// A leader whose state machine waits would hold every commit. The
		// transfer goes through raft's main loop, which waits too once
		// the entries it queued for the state machine fill its queue: the
		// rebuild does not wait for it long.
		done := make(chan error, 1)
		go func() { done <- r.raft.LeadershipTransfer().Error() }()
		select {
		case err := <-done:
			if err != nil {
				r.logger.Warn("rebuild: hand leadership over", "error", err)
			}
		case <-time.After(rebuildRetry):
			r.logger.Warn("rebuild: leadership not handed over yet; rebuilding all the same")
		case <-ctx.Done():
			return
		}
	}
	if reset {
		r.fsm.restoreMu.Lock()
		aside, err := r.kv.Reset(fmt.Errorf("%w: %w", ErrRebuilding, cause))
		r.fsm.restoreMu.Unlock()
		if err != nil {
			r.fsm.markFailed(fmt.Errorf("set the corrupt key-value state aside: %w", err))
			r.fsm.gate.reopen()
			return
		}
		r.logger.Error("set the corrupt key-value state aside", "file", storage.CorruptPath(cause), "error", cause, "moved_to", aside)
	}
	for try := 0; ; try++ {
		if ctx.Err() != nil {
			return
		}
		id, addr := r.rebuildSource(try)
		var err error
		if addr == "" {
			err = errors.New("no other member is known yet")
		} else {
			r.fsm.gate.say(fmt.Sprintf("rebuilding state from %s (%s); it was corrupt: %v", id, addr, cause))
			err = r.fetchState(ctx, addr)
		}
		if err == nil {
			r.rebuilds.Add(1)
			r.logger.Info("rebuilt the key-value state", "from", id, "address", addr,
				"revision", r.kv.AppliedIndex(), "took", time.Since(start).Round(time.Millisecond))
			r.fsm.gate.reopen()
			return
		}
		if ctx.Err() != nil {
			return
		}
		r.logger.Warn("rebuild the key-value state", "from", id, "address", addr, "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(time.Duration(try+1)*500*time.Millisecond, rebuildRetry)):
		}
	}
}

// rebuildSource picks the member to copy from: the leader when there is
// one, else the other members in turn.
func (r *Replica) rebuildSource(try int) (id, addr string) {
	if a, i := r.raft.LeaderWithID(); a != "" && string(i) != r.id && try%2 == 0 {
		return string(i), string(a)
	}
	f := r.raft.GetConfiguration()
	if f.Error() != nil {
		return "", ""
	}
	var others []raft.Server
	for _, s := range f.Configuration().Servers {
		if string(s.ID) != r.id {
			others = append(others, s)
		}
	}
	if len(others) == 0 {
		return "", ""
	}
	s := others[try%len(others)]
	return string(s.ID), string(s.Address)
}

// rebuildFloor is the lowest revision a copy may be at: past every batch
// the state machine handled, and past the newest raft snapshot (raft
// starts from it and hands only later entries).
func (r *Replica) rebuildFloor() uint64 {
	floor := r.fsm.handled.Load()
	if list, err := r.snaps.List(); err == nil && len(list) > 0 {
		floor = max(floor, list[0].Index)
	}
	return floor
}

// fetchState copies the state of the member at addr into the store.
func (r *Replica) fetchState(ctx context.Context, addr string) error {
	if r.fetch == nil {
		return errors.New("this node cannot fetch a state from other members")
	}
	floor := r.rebuildFloor()
	rc, rev, err := r.fetch(ctx, addr, floor)
	if err != nil {
		return fmt.Errorf("fetch a copy at revision %d or later: %w", floor, err)
	}
	defer rc.Close()
	r.fsm.restoreMu.Lock()
	defer r.fsm.restoreMu.Unlock()
	if err := r.kv.Restore(rc); err != nil {
		return fmt.Errorf("load the copy at revision %d: %w", rev, err)
	}
	if got, need := r.kv.AppliedIndex(), r.rebuildFloor(); got < need {
		return fmt.Errorf("the copy is at revision %d, behind %d", got, need)
	}
	if err := r.fsm.loadAlarms(); err != nil {
		return err
	}
	if err := r.fsm.loadAuth(); err != nil {
		return err
	}
	if err := r.fsm.loadTable(); err != nil {
		return err
	}
	if err := r.fsm.loadLeases(); err != nil {
		return err
	}
	return r.repairSnapshot()
}

// CopyState writes a copy of the key-value state, at a revision of at
// least minRev, for another member to rebuild its own from: it waits
// (until ctx ends) for this node to apply that far, then calls start with
// the copy's revision and writes the copy to what start returns.
func (r *Replica) CopyState(ctx context.Context, minRev uint64, start func(rev uint64) (io.Writer, error)) error {
	_, err := r.copyState(ctx, minRev, start)
	return err
}

// copyState is CopyState, and says what the copy holds.
func (r *Replica) copyState(ctx context.Context, minRev uint64, start func(rev uint64) (io.Writer, error)) (storage.SnapshotStats, error) {
	if err := r.fsm.serving(); err != nil {
		return storage.SnapshotStats{}, err
	}
	select {
	case <-r.kv.WaitApplied(minRev):
	case <-ctx.Done():
		return storage.SnapshotStats{}, fmt.Errorf("wait to apply revision %d (at %d): %w", minRev, r.kv.AppliedIndex(), ctx.Err())
	}
	rev := r.kv.AppliedIndex()
	w, err := start(rev)
	if err != nil {
		return storage.SnapshotStats{}, err
	}
	return r.kv.SnapshotCounted(w, rev)
}

// StateRebuilds is how many times the node rebuilt its key-value state
// since it started.
func (r *Replica) StateRebuilds() uint64 { return r.rebuilds.Load() }
