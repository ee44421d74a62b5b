package consensus

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/auth"
	"github.com/kvstore/kvstore/consensus/ranges"
	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// ErrStateMachineFailed means the node could not write its state and stopped
// applying entries; it needs a restart, which replays from the last durable
// applied index.
var ErrStateMachineFailed = errors.New("state machine failed; restart the node")

// applyResult is what ApplyBatch hands back to the caller of raft.Apply.
type applyResult struct {
	resp proto.Message
	err  error
}

// FSM applies committed raft entries to the key-value store. It implements
// raft.BatchingFSM: a whole batch of entries is written in one Badger write.
type FSM struct {
	kv     *storage.KV
	limits Limits
	logger *slog.Logger
	failed atomic.Pointer[error]
	// lessor hears of every lease granted and revoked.
	lessor *lessor
	// alarms is the set of raised alarms as of the applied index.
	alarms *alarms
	// auth is the authentication state as of the applied index (never nil
	// once the FSM is built).
	auth atomic.Pointer[auth.State]
	// group is the group this state machine serves; table the range
	// table it checks writes against (groups.go), nil for one with only
	// the meta group.
	group ranges.GroupID
	table atomic.Pointer[ranges.Table]
	// onTable hears of the meta group's table after each batch that
	// changed it.
	onTable func(*ranges.Table)
	// onClusterID hears of every set_cluster_id entry (Config.OnClusterID).
	onClusterID func(id string) error
	// observeCommit hears how long each batch's commit took
	// (Observer.BackendCommit); nil: not timed.
	observeCommit func(time.Duration)
	// onApplied, if set, is called after each batch raft hands the FSM.
	onApplied func()
	// observeSnapshot hears how long each checkpoint took
	// (Observer.Snapshot).
	observeSnapshot func(time.Duration)

	// gate holds entries back while the store is rebuilt (rebuild.go);
	// stop, once closed, ends a wait at it.
	gate gate
	stop <-chan struct{}
	// restoreMu is held by whatever writes the store: a batch, raft's
	// restore, a rebuild's reset and restore.
	restoreMu sync.Mutex
	// handled is the last index of the last batch ApplyBatch returned:
	// raft never hands those again, so a rebuilt store must hold them. A
	// batch waiting for a rebuild is applied to the rebuilt store.
	handled atomic.Uint64
}

var _ raft.BatchingFSM = (*FSM)(nil)

// NewFSM returns the state machine over kv.
func NewFSM(kv *storage.KV, limits Limits, logger *slog.Logger) *FSM {
	f := &FSM{kv: kv, limits: limits, logger: logger, lessor: newLessor(), alarms: newAlarms(), gate: newGate()}
	f.auth.Store(auth.NewState(nil))
	return f
}

// leaseChange is a lease granted (ttl > 0) or revoked in a batch, told to
// the lessor once the batch is in the store.
type leaseChange struct {
	id  int64
	ttl time.Duration
}

// Err returns the error that stopped the state machine, or nil.
func (f *FSM) Err() error {
	if p := f.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// Apply applies one entry.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies entries in index order and returns one result for each,
// configuration and no-op entries included. Entries at or below the store's
// applied index were applied before a restart and are skipped. While the
// store is rebuilt it waits; a batch that finds the store damaged starts
// the rebuild, waits for it, and is applied to the rebuilt store.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	if n := len(logs); n > 0 {
		defer func() {
			if last := logs[n-1].Index; last > f.handled.Load() {
				f.handled.Store(last)
			}
			if f.onApplied != nil {
				f.onApplied()
			}
		}()
	}
	for {
		if _, open := f.gate.state(); open != nil {
			select {
			case <-open:
			case <-f.stop:
				results := make([]any, len(logs))
				fillErr(results, ErrShutdown)
				return results
			}
		}
		// A rebuild sets the store aside under the same lock: never
		// under a batch being written.
		f.restoreMu.Lock()
		if _, open := f.gate.state(); open != nil {
			f.restoreMu.Unlock()
			continue
		}
		results, damaged := f.applyBatch(logs)
		f.restoreMu.Unlock()
		if !damaged {
			return results
		}
		if _, open := f.gate.state(); open == nil {
			// Nobody rebuilds the store (no replica runs it).
			f.markFailed(fmt.Errorf("the key-value state is corrupt and nothing rebuilds it"))
			fillErr(results, ErrStateMachineFailed)
			return results
		}
	}
}

// applyBatch is one try at ApplyBatch; damaged says the store was found
// damaged (and reported, which starts a rebuild): nothing was applied.
func (f *FSM) applyBatch(logs []*raft.Log) (results []any, damaged bool) {
	results = make([]any, len(logs))
	if err := f.Err(); err != nil {
		fillErr(results, err)
		return results, false
	}
	applied := f.kv.AppliedIndex()
	b := f.kv.NewBatch()
	// A panic inside the storage engine is damage, not a crash.
	defer func() {
		if p := recover(); p != nil {
			func() {
				defer func() { _ = recover() }()
				b.Discard()
			}()
			f.logger.Error("the storage engine panicked applying entries", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			f.kv.Corrupted(&storage.CorruptError{Path: f.kv.Dir(), Err: fmt.Errorf("the storage engine panicked applying entries: %v", p)})
			results, damaged = make([]any, len(logs)), true
		}
	}()
	var leases []leaseChange
	// The alarms as of the entry being applied: one raised in this batch
	// refuses the writes after it.
	alarms := f.alarms.get()
	// Likewise the auth state: a change is seen by the entries after it.
	authState := f.auth.Load()
	table := f.table.Load()
	tableBefore := table
	for i, l := range logs {
		if l.Index <= applied {
			continue
		}
		if err := b.Begin(l.Index); err != nil {
			return f.fail(b, results, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		res, err := f.applyCommand(b, l.Data, &leases, &alarms, &authState, &table)
		if err != nil {
			return f.fail(b, results, fmt.Errorf("apply entry %d: %w", l.Index, err))
		}
		results[i] = res
	}
	// The table before the state: a read that sees the batch's state must
	// see its table too (Replica.checkReadOwner). One that sees the table
	// first refuses a read of a span the batch gave away, and its router
	// sends it to the new owner. A batch that fails to commit fails the
	// state machine or rebuilds it, which loads the table again.
	if table != tableBefore {
		f.table.Store(table)
	}
	var committing time.Time
	if f.observeCommit != nil {
		committing = time.Now()
	}
	err := b.Commit()
	if f.observeCommit != nil {
		f.observeCommit(time.Since(committing))
	}
	if err != nil {
		if errors.Is(f.kv.Corrupted(err), storage.ErrCorrupt) {
			return results, true
		}
		f.markFailed(err)
		fillErr(results, ErrStateMachineFailed)
		return results, false
	}
	for _, c := range leases {
		if c.ttl > 0 {
			f.lessor.granted(c.id, c.ttl)
		} else {
			f.lessor.revoked(c.id)
		}
	}
	f.alarms.publish(alarms)
	f.auth.Store(authState)
	if table != tableBefore && f.onTable != nil {
		f.onTable(table)
	}
	return results, false
}

// applyCommand runs one command. A command that cannot be decoded is
// answered with an error and changes nothing, the same way on every node;
// any other error is a storage failure.
func (f *FSM) applyCommand(b *storage.Batch, data []byte, leases *[]leaseChange, alarms *alarmSet, authState **auth.State, table **ranges.Table) (*applyResult, error) {
	var cmd raftcmdv1.Command
	if err := proto.Unmarshal(data, &cmd); err != nil {
		return &applyResult{err: fmt.Errorf("decode command: %w", err)}, nil
	}
	// Refused the same way on every node: the alarms are replicated state.
	if err := refusedByAlarm(*alarms, kindOf(&cmd)); err != nil {
		return &applyResult{err: err}, nil
	}
	var (
		resp proto.Message
		err  error
	)
	switch c := cmd.GetCommand().(type) {
	case *raftcmdv1.Command_Put:
		if err = checkOwner(f.group, *table, c.Put, true); err == nil {
			resp, err = doPut(b, c.Put)
		}
	case *raftcmdv1.Command_Delete:
		if err = checkOwner(f.group, *table, c.Delete, true); err == nil {
			resp, err = doDelete(b, c.Delete)
		}
	case *raftcmdv1.Command_Txn:
		if err = checkOwner(f.group, *table, c.Txn, true); err == nil {
			resp, err = doTxn(b, c.Txn, f.limits)
		}
	case *raftcmdv1.Command_Compact:
		resp, err = doCompact(b, c.Compact, true)
	case *raftcmdv1.Command_AutoCompact:
		resp, err = doCompact(b, c.AutoCompact, false)
	case *raftcmdv1.Command_LeaseGrant:
		resp, err = doLeaseGrant(b, c.LeaseGrant, leases)
	case *raftcmdv1.Command_LeaseRevoke:
		resp, err = doLeaseRevoke(b, c.LeaseRevoke, leases)
	case *raftcmdv1.Command_SetClusterId:
		id := c.SetClusterId.GetClusterId()
		if !ValidClusterID(id) {
			return &applyResult{err: fmt.Errorf("set cluster id: %q is not 32 hex digits", id)}, nil
		}
		if f.onClusterID != nil {
			if err := f.onClusterID(id); err != nil {
				return nil, fmt.Errorf("set cluster id: %w", err)
			}
		}
		return &applyResult{}, nil
	case *raftcmdv1.Command_Alarm:
		var set alarmSet
		resp, set, err = doAlarm(b, c.Alarm, *alarms)
		if err == nil {
			*alarms = set
		}
	case *raftcmdv1.Command_Auth:
		err = doAuth(b, c.Auth, authState)
		resp = &kvstorev1.AuthChangeResponse{}
	case *raftcmdv1.Command_GroupCreate:
		if f.group != ranges.MetaID {
			return &applyResult{err: errors.New("create group: not the meta group")}, nil
		}
		resp, err = doGroupCreate(b, c.GroupCreate, table)
	case *raftcmdv1.Command_GroupMove:
		if f.group != ranges.MetaID {
			return &applyResult{err: errors.New("move group: not the meta group")}, nil
		}
		resp, err = doGroupMove(b, c.GroupMove, table)
	case nil:
		// A no-op: the read path commits one at the start of a term.
		return &applyResult{}, nil
	default:
		return &applyResult{err: fmt.Errorf("unknown command %T", c)}, nil
	}
	var rej rejected
	if errors.As(err, &rej) {
		// Refused the same way on every node; nothing was written.
		return &applyResult{err: rej.error}, nil
	}
	if err != nil {
		return nil, err
	}
	return &applyResult{resp: resp}, nil
}

// ValidClusterID reports whether id has the form of a cluster id: 32
// lower-case hex digits (16 random bytes).
func ValidClusterID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// rejected wraps an error that refuses a command (as opposed to a storage
// failure, which stops the state machine). Commands check before they
// write, so a rejected command has written nothing.
type rejected struct{ error }

func (r rejected) Unwrap() error { return r.error }

// fail ends a batch that could not be applied: damage to the store is
// reported (which starts a rebuild); any other error stops the state
// machine.
func (f *FSM) fail(b *storage.Batch, results []any, err error) ([]any, bool) {
	b.Discard()
	if errors.Is(f.kv.Corrupted(err), storage.ErrCorrupt) {
		return results, true
	}
	f.markFailed(err)
	fillErr(results, ErrStateMachineFailed)
	return results, false
}

func (f *FSM) markFailed(err error) {
	f.logger.Error("state machine stopped: cannot write the key-value store", "error", err)
	werr := fmt.Errorf("%w: %w", ErrStateMachineFailed, err)
	f.failed.CompareAndSwap(nil, &werr)
}

func fillErr(results []any, err error) {
	for i := range results {
		results[i] = &applyResult{err: err}
	}
}

// Snapshot checkpoints the store (storage.KV.Checkpoint): it makes the
// store durable up to the applied index and records that index, which is
// all the snapshot holds. Raft may then drop its log below the index. The
// data is copied only when a follower needs it (snapshotStore).
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.serving(); err != nil {
		return nil, err
	}
	start := time.Now()
	idx, err := f.kv.Checkpoint()
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if f.observeSnapshot != nil {
		f.observeSnapshot(time.Since(start))
	}
	return checkpointSnapshot(idx), nil
}

// Restore replaces the store with a snapshot: a copy of a store, as
// snapshotStore.Open gives. A checkpoint marker cannot be restored.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	f.restoreMu.Lock()
	defer f.restoreMu.Unlock()
	br := bufio.NewReaderSize(rc, 64<<10)
	// Refuse a marker before the store is dropped: loading it would fail
	// half way, with the old state gone.
	if head, _ := br.Peek(checkpointMarkerLen); isCheckpointMarker(head) {
		return fmt.Errorf("restore snapshot: %w", errCheckpointMarker)
	}
	if err := f.kv.Restore(br); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if err := f.loadAlarms(); err != nil {
		return err
	}
	if err := f.loadAuth(); err != nil {
		return err
	}
	if err := f.loadTable(); err != nil {
		return err
	}
	return f.loadLeases()
}

// loadAlarms reads the raised alarms from the store.
func (f *FSM) loadAlarms() error {
	list, err := f.kv.Alarms()
	if err != nil {
		return fmt.Errorf("load alarms: %w", err)
	}
	f.alarms.publish(alarmSet(list))
	return nil
}

// loadLeases tells the lessor the leases the store holds.
func (f *FSM) loadLeases() error {
	leases, err := f.kv.Leases()
	if err != nil {
		return fmt.Errorf("load leases: %w", err)
	}
	f.lessor.reload(leases)
	return nil
}

// checkpointSnapshot is a snapshot that names the index of a checkpoint.
type checkpointSnapshot uint64

func (s checkpointSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(encodeCheckpointMarker(uint64(s))); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot at %d: %w", uint64(s), err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot at %d: %w", uint64(s), err)
	}
	return nil
}

func (checkpointSnapshot) Release() {}
