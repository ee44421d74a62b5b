package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/consensus/ranges"
	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
	"github.com/kvstore/kvstore/storage/diskspace"
)

var (
	// ErrNotLeader means the call needs the leader and this node is not it.
	ErrNotLeader = errors.New("not the raft leader")
	// ErrShutdown means the node is stopping.
	ErrShutdown = errors.New("raft is shut down")
	// ErrTimeout means raft did not take the request in time.
	ErrTimeout = errors.New("raft timed out")
	// ErrLeadershipLost means the leader lost its office while a write was
	// in flight: the write may or may not have been applied, so it must not
	// be retried blindly.
	ErrLeadershipLost = errors.New("leadership lost while the write was in flight; it may or may not have been applied")
	// ErrRaftLogFailed refuses every request on a node whose raft log
	// failed a write or an fsync (LogFailed); a restart reopens the log
	// from what the disk holds.
	ErrRaftLogFailed = errors.New("the raft log failed a write; this node serves nothing until it is restarted")
	// ErrCannotCatchUp means a linearizable read needs entries this node
	// cannot store (Config.LogStalled): another node, the leader, must
	// serve it.
	ErrCannotCatchUp = errors.New("this node's raft log refuses the leader's entries (its disk is full), so it cannot catch up; read at the leader")
)

// DefaultRaftTimeout is how long a follower waits for a silent leader
// before it stands for election. A leader heartbeats a fifth of it apart
// (paceHeartbeats), so 500ms means 100ms heartbeats: a failover takes
// about a second on a LAN, like etcd's defaults (100ms heartbeats, 1s
// election timeout).
const DefaultRaftTimeout = 500 * time.Millisecond

// pushedCommitTimeout is raft's CommitTimeout when the leader pushes
// commit indexes itself (pushTransport): how soon, with no write coming,
// the leader sends again to a follower whose append failed. A variable
// for tests that take the idle append away.
var pushedCommitTimeout = 500 * time.Millisecond

// Config is what a Replica is built from. The stores and the transport are
// seams: tests may pass raft's in-memory twins.
type Config struct {
	// ID is the node's raft server id.
	ID string
	// Logs and Stable hold the raft log and raft's own state.
	Logs   raft.LogStore
	Stable raft.StableStore
	// Snapshots holds raft snapshots: checkpoint markers taken here, and
	// copies of a leader's store received from it.
	Snapshots raft.SnapshotStore
	// TempDir holds copies of the store while they are sent to followers
	// as snapshots; on the same disk as the store, as they can be as large.
	// "" is the system's temporary directory.
	TempDir string
	// Group is the group this replica serves: ranges.MetaID (0) for the
	// meta group, today's one group.
	Group ranges.GroupID
	// GroupTable is, for a data group, the range table it was created at:
	// its replica applies only writes to the ranges it owns there.
	GroupTable *ranges.Table
	// OnTable, for the meta group, is called with the range table after
	// each batch of entries that changed it.
	OnTable func(*ranges.Table)
	// Transport carries raft between nodes; its LocalAddr is this node's
	// advertised address.
	Transport raft.Transport
	// KV is the key-value state.
	KV *storage.KV
	// Limits bound reads.
	Limits Limits
	// Bootstrap makes a node with no raft state start a one-node cluster.
	Bootstrap bool
	// HeartbeatTimeout and ElectionTimeout are raft's; 0 takes
	// DefaultRaftTimeout.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// SnapshotThreshold is how many entries since the last snapshot start a
	// new one; 0 takes raft's default.
	SnapshotThreshold uint64
	// TrailingLogs is how many entries a snapshot leaves in the log for
	// followers that lag; 0 takes raft's default (10,240).
	TrailingLogs uint64
	// SnapshotInterval is how often raft checks the threshold; 0 takes
	// raft's default.
	SnapshotInterval time.Duration
	// LeaderReadIndex asks the leader at addr for a read index (the peer
	// service's ReadIndex), so that followers serve linearizable reads
	// locally, and so that a follower is ready only once it has applied
	// what the cluster had when it started. Nil: only the leader serves
	// linearizable reads, and a follower is never ready.
	LeaderReadIndex func(ctx context.Context, addr string) (uint64, error)
	// LogStalled reports whether Logs refuses the leader's entries (its
	// disk is full): a follower that cannot store them cannot apply them,
	// so a linearizable read that waits for them fails at once with
	// ErrCannotCatchUp instead of waiting forever. Nil: never.
	LogStalled func() bool
	// Retention is how much history the leader keeps before compacting
	// it; the zero value keeps everything.
	Retention Retention
	// ClusterID returns the id of the cluster this node belongs to ("" for
	// none yet), for response headers and Status. Nil: none.
	ClusterID func() string
	// OnClusterID is called, in log order, for every set_cluster_id entry
	// applied (see ProposeClusterID): the first one a cluster applies names
	// it. An error stops the state machine, as a storage failure does.
	OnClusterID func(id string) error
	// Disk, when set, is the guard of the data directory's free space:
	// the leader refuses writes it cannot take, and the node raises its
	// NOSPACE alarm while it is short (alarm.go).
	Disk *diskspace.Guard
	// QuotaBytes is the space quota of the key-value state: while the
	// state's files (storage.KV.DiskBytes) take more, this node raises a
	// NOSPACE alarm (quota.go). 0: no quota.
	QuotaBytes int64
	// LeaderAlarm sends an alarm change to the leader at addr (the
	// ClusterService's Alarm), for a follower raising or clearing its own
	// alarm. Nil: only a leader can.
	LeaderAlarm func(ctx context.Context, addr string, req *kvstorev1.AlarmRequest) error
	// MemberHash asks member id, at addr, for a hash of its state at a
	// revision (the ClusterService's AlarmHash), for the consistency
	// check. Nil: the check covers this node only.
	MemberHash func(ctx context.Context, id, addr string, rev uint64) (storage.StateHash, error)
	// ConsistencyCheck is how often the leader compares the members'
	// states (consistency.go); 0 never.
	ConsistencyCheck time.Duration
	// FetchState copies the key-value state of another member: a node
	// that finds its own corrupt rebuilds it from one (rebuild.go). Nil:
	// such a node serves nothing until it is restarted.
	FetchState StateFetcher
	// Rebuild, when set, says why KV is a new, empty store that stands
	// for one set aside as corrupt before the replica started: it is
	// rebuilt from another member at once.
	Rebuild error
	// RepairSnapshot is the newest raft snapshot, damaged, to replace
	// once the state is rebuilt; it comes with Rebuild.
	RepairSnapshot *DamagedSnapshot
	// OnStateCorrupt, when set, hears of each time this node finds its
	// key-value state corrupt (Rebuild, or damage found while it runs),
	// as its rebuild starts: the hook for raising an alarm. It must not
	// wait.
	OnStateCorrupt func(cause error)
	// Observer hears of timings for the node's metrics.
	Observer Observer
	Logger   *slog.Logger
}

// Replica is one member of the raft group serving the key-value store:
// writes go through the raft log, linearizable reads through a read index.
type Replica struct {
	id    string
	raft  *raft.Raft
	fsm   *FSM
	kv    *storage.KV
	trans raft.Transport
	// hadState is whether raft had state when the replica started.
	hadState bool
	ri       *readIndex // local reads: asks the leader when following
	peerRI   *readIndex // reads of followers that ask us: leader only
	limits   Limits
	// logStalled is Config.LogStalled.
	logStalled func() bool
	logger     *slog.Logger
	lessor     *lessor
	// proposals counts proposals for the metrics; observe is
	// Config.Observer.
	proposals proposalStats
	observe   Observer
	// clusterID is Config.ClusterID, never nil.
	clusterID func() string
	alarms    *alarms
	disk      *diskspace.Guard
	quota     int64
	// leaderAlarm and memberHash are Config's LeaderAlarm and MemberHash.
	leaderAlarm func(ctx context.Context, addr string, req *kvstorev1.AlarmRequest) error
	memberHash  func(ctx context.Context, id, addr string, rev uint64) (storage.StateHash, error)
	// stop ends the background loops; loops counts them.
	stop  chan struct{}
	loops sync.WaitGroup
	snaps *snapshotStore
	// fetch, rebuilds, rebuilding, repair and onCorrupt rebuild a
	// corrupt state (rebuild.go): the copier, how many rebuilds
	// completed, the one running, the damaged snapshot to replace, who
	// hears of it.
	fetch      StateFetcher
	onCorrupt  func(error)
	rebuilds   atomic.Uint64
	rebuilding sync.WaitGroup
	repair     *DamagedSnapshot
	// caughtUp and catchUpTarget are runCatchUp's: set once the state
	// holds what the cluster had when this node started, and the read
	// index it waits for.
	caughtUp      atomic.Bool
	catchUpTarget atomic.Uint64
}

// NewReplica starts raft over the given stores.
func NewReplica(cfg Config) (*Replica, error) {
	if cfg.ID == "" {
		return nil, errors.New("consensus: empty node id")
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = NewHCLogger(cfg.Logger, "raft", hclog.Info)
	// The FSM keeps its own state on disk and skips what it already applied.
	rc.NoSnapshotRestoreOnStart = true
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	// Followers learn that an entry committed only from the leader's next
	// append; with no write after it, raft sends an idle append every
	// CommitTimeout (randomized up to twice that), at rest too. On the
	// node's transport the leader pushes the commit index itself as soon
	// as it has one (pushTransport), so the idle append only retries a
	// follower whose append failed while no write comes: raft's default
	// of 50 ms where nothing pushes.
	rc.CommitTimeout = 50 * time.Millisecond
	trans := cfg.Transport
	push := newPushTransport(cfg.Transport)
	if push != nil {
		trans = push
		rc.CommitTimeout = pushedCommitTimeout
	}
	// Each heartbeat and append would be measured twice, once more under
	// a name per peer that no dashboard reads: one measure less per
	// message, which a cluster at rest sends all the time.
	rc.NoLegacyTelemetry = true
	rc.HeartbeatTimeout = orDefault(cfg.HeartbeatTimeout, DefaultRaftTimeout)
	rc.ElectionTimeout = orDefault(cfg.ElectionTimeout, DefaultRaftTimeout)
	// A leader that heard from no quorum for this long steps down. With
	// no write, the leader's heartbeats (paceHeartbeats: up to a fifth of
	// HeartbeatTimeout apart) are all it hears: HeartbeatTimeout leaves
	// room for two and a half of them, as raft's defaults do (500 ms to
	// 200 ms), and a leader cut off steps down when its followers may
	// first stand for election.
	rc.LeaderLeaseTimeout = rc.HeartbeatTimeout
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft config: %w", err)
	}

	fsm := NewFSM(cfg.KV, cfg.Limits, cfg.Logger)
	fsm.onClusterID = cfg.OnClusterID
	fsm.observeCommit = cfg.Observer.BackendCommit
	fsm.observeSnapshot = cfg.Observer.Snapshot
	fsm.group, fsm.onTable = cfg.Group, cfg.OnTable
	if cfg.Group != ranges.MetaID {
		fsm.table.Store(cfg.GroupTable)
	}
	if cfg.ClusterID == nil {
		cfg.ClusterID = func() string { return "" }
	}
	stop := make(chan struct{})
	fsm.stop = stop
	snaps := newSnapshotStore(cfg.Snapshots, cfg.KV, fsm.serving, cfg.TempDir, cfg.Disk, cfg.Logger)
	if cfg.TempDir != "" {
		// Only in a directory of our own: others may be sending theirs.
		snaps.removeStaleCopies()
	}
	if cfg.Rebuild != nil {
		// Nothing to serve or apply until the state is rebuilt.
		fsm.gate.shut(fmt.Sprintf("the key-value state is corrupt (%v); waiting for a member to rebuild it from", cfg.Rebuild))
	} else {
		if err := catchUpFromSnapshot(cfg.KV, fsm, cfg.Logs, snaps, cfg.Logger); err != nil {
			return nil, err
		}
		if err := fsm.loadLeases(); err != nil {
			return nil, err
		}
		if err := fsm.loadAuth(); err != nil {
			return nil, err
		}
		if err := fsm.loadTable(); err != nil {
			return nil, err
		}
	}
	if err := fsm.loadAlarms(); err != nil {
		return nil, err
	}

	hasState, err := raft.HasExistingState(cfg.Logs, cfg.Stable, snaps)
	if err != nil {
		return nil, fmt.Errorf("check raft state: %w", err)
	}
	r, err := newRaft(rc, fsm, cfg.Logs, cfg.Stable, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	if push != nil {
		push.setState(r)
		fsm.onApplied = push.kick
	}
	if cfg.Bootstrap && !hasState {
		conf := raft.Configuration{Servers: []raft.Server{{
			ID: raft.ServerID(cfg.ID), Address: cfg.Transport.LocalAddr(), Suffrage: raft.Voter,
		}}}
		if err := r.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			r.Shutdown()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		cfg.Logger.Info("bootstrapped a new one-node cluster", "id", cfg.ID)
	}
	rep := &Replica{
		hadState:    hasState || cfg.Bootstrap,
		id:          cfg.ID,
		raft:        r,
		fsm:         fsm,
		kv:          cfg.KV,
		trans:       trans,
		limits:      cfg.Limits,
		logStalled:  cfg.LogStalled,
		logger:      cfg.Logger,
		lessor:      fsm.lessor,
		observe:     cfg.Observer,
		clusterID:   cfg.ClusterID,
		alarms:      fsm.alarms,
		disk:        cfg.Disk,
		quota:       max(cfg.QuotaBytes, 0),
		leaderAlarm: cfg.LeaderAlarm,
		memberHash:  cfg.MemberHash,
		snaps:       snaps,
		fetch:       cfg.FetchState,
		repair:      cfg.RepairSnapshot,
		onCorrupt:   cfg.OnStateCorrupt,
		stop:        stop,
	}
	// Damage found while the node runs starts the same rebuild.
	cfg.KV.OnCorrupt(func(err error) { rep.startRebuild(err, true) })
	if cfg.Rebuild != nil {
		rep.logger.Error("the key-value state was corrupt and is set aside; rebuilding it from another member",
			"file", storage.CorruptPath(cfg.Rebuild), "error", cfg.Rebuild)
		if rep.onCorrupt != nil {
			rep.onCorrupt(cfg.Rebuild)
		}
		rep.rebuilding.Add(1)
		go rep.rebuild(cfg.Rebuild, false)
	}
	rep.peerRI = &readIndex{raft: r, timeout: rc.ElectionTimeout * 2, noop: rep.noop}
	rep.ri = &readIndex{raft: r, timeout: rc.ElectionTimeout * 2, noop: rep.noop}
	if cfg.LeaderReadIndex != nil {
		rep.ri.ask = func(ctx context.Context) (uint64, error) {
			addr, _ := r.LeaderWithID()
			if addr == "" {
				return 0, fmt.Errorf("%w: no leader is known", ErrNotLeader)
			}
			idx, err := cfg.LeaderReadIndex(ctx, string(addr))
			if err != nil {
				return 0, fmt.Errorf("%w: read index from the leader at %s: %w", ErrNotLeader, addr, err)
			}
			return idx, nil
		}
	}
	rep.goLoop(rep.runLessor)
	rep.goLoop(rep.runCatchUp)
	rep.goLoop(func() { rep.paceHeartbeats(rc.HeartbeatTimeout, rc.ElectionTimeout) })
	if cfg.Retention.Age > 0 || cfg.Retention.Revisions > 0 {
		rep.goLoop(func() { rep.runAutoCompact(cfg.Retention) })
	}
	if cfg.Disk != nil || rep.quota > 0 {
		rep.goLoop(rep.runSpaceAlarm)
	}
	if cfg.ConsistencyCheck > 0 {
		rep.goLoop(func() { rep.runConsistencyCheck(cfg.ConsistencyCheck) })
	}
	return rep, nil
}

// catchUpFromSnapshot restores the store from the newest raft snapshot when
// the store is behind it. Raft will not replay entries below its snapshot
// (we start it with NoSnapshotRestoreOnStart), so a store that lost its tail
// must be brought up to the snapshot first. A snapshot index can also lie
// past the store's applied index only because the entries in between are
// raft no-ops, which never reach the state machine: then the store is whole
// and restoring it (the whole data set) is skipped.
func catchUpFromSnapshot(kv *storage.KV, fsm *FSM, logs raft.LogStore, snaps raft.SnapshotStore, logger *slog.Logger) error {
	list, err := snaps.List()
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	applied := kv.AppliedIndex()
	if len(list) == 0 || list[0].Index <= applied || onlyNoops(logs, applied+1, list[0].Index) {
		return nil
	}
	logger.Warn("store is behind the newest snapshot; restoring it", "applied", applied, "snapshot", list[0].Index)
	_, rc, err := snaps.Open(list[0].ID)
	if err != nil {
		return fmt.Errorf("open snapshot %s: %w", list[0].ID, err)
	}
	return fsm.Restore(rc)
}

// onlyNoops tells whether the log holds [from, to] and none of it reaches
// the state machine.
func onlyNoops(logs raft.LogStore, from, to uint64) bool {
	var l raft.Log
	for i := from; i <= to; i++ {
		if err := logs.GetLog(i, &l); err != nil {
			return false
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return false
		}
	}
	return true
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// ID is the node's raft server id.
func (r *Replica) ID() string { return r.id }

// Raft exposes the raft instance, for membership changes and tests.
func (r *Replica) Raft() *raft.Raft { return r.raft }

// HasState tells whether this node belongs to a raft cluster: it had raft
// state when it started, bootstrapped since, or has been added by a leader.
func (r *Replica) HasState() bool {
	if r.hadState {
		return true
	}
	f := r.raft.GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 0
}

// Bootstrap starts a new cluster of servers. Every server must be given the
// same list; a node that has raft state refuses (raft.ErrCantBootstrap).
func (r *Replica) Bootstrap(servers []raft.Server) error {
	if err := r.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	return nil
}

// ReadIndex returns a read index for a follower's linearizable read. Only
// the leader answers; a follower says ErrNotLeader rather than ask on.
func (r *Replica) ReadIndex(ctx context.Context) (uint64, error) {
	if err := r.fsm.serving(); err != nil {
		return 0, err
	}
	return r.peerRI.get(ctx)
}

// Barrier waits until this replica has applied every entry committed when
// it is called, as a linearizable read does before it reads: what the
// replica's state says afterwards is at least as new as any answer given
// before the call.
func (r *Replica) Barrier(ctx context.Context) error {
	_, _, err := r.view(ctx, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE, 0)
	return err
}

// Leader returns the leader's id and address, empty when none is known.
func (r *Replica) Leader() (id, addr string) {
	a, i := r.raft.LeaderWithID()
	return string(i), string(a)
}

// Ready reports why the replica cannot serve, or nil. A member named by a
// CORRUPT alarm is not ready: its state disagrees with the majority's.
func (r *Replica) Ready() error {
	if err := r.fsm.serving(); err != nil {
		return err
	}
	if addr, _ := r.raft.LeaderWithID(); addr == "" {
		return errors.New("no raft leader")
	}
	if a, ok := r.alarms.get().find(kvstorev1.AlarmType_ALARM_TYPE_CORRUPT, r.id); ok {
		return &AlarmError{Alarm: a}
	}
	return r.catchingUp()
}

// Notices says, one line each, what a ready node does not do: the alarms
// raised in the cluster and why this node refuses writes.
func (r *Replica) Notices() []string {
	var out []string
	for _, a := range r.alarms.get() {
		out = append(out, fmt.Sprintf("alarm %s of member %s: %s", alarmName(a.Type), a.Member, a.Reason))
	}
	if why := r.writesRefused(); why != "" {
		out = append(out, "writes refused: "+why)
	}
	return out
}

// alarmName is an alarm type as operators say it: NOSPACE, CORRUPT.
func alarmName(t int32) string {
	return strings.TrimPrefix(kvstorev1.AlarmType(t).String(), "ALARM_TYPE_")
}

// writesRefused says why a put on this node would be refused now for lack
// of space or because of an alarm; "" when it would not.
func (r *Replica) writesRefused() string {
	if err := refusedByAlarm(r.alarms.get(), writeAdds); err != nil {
		return err.Error()
	}
	if st := r.disk.Status(); st.Level != diskspace.OK {
		return st.Reason()
	}
	return ""
}

// Shutdown stops raft and closes the transport (raft leaves that to its
// caller). The stores stay open: their owner closes them.
func (r *Replica) Shutdown() error {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.loops.Wait()
	r.rebuilding.Wait()
	err := r.raft.Shutdown().Error()
	if c, ok := r.trans.(interface{ Close() error }); ok {
		if cerr := c.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("raft shutdown: %w", err)
	}
	return nil
}

// LogFailed stops the replica after its raft log failed a write or an
// fsync (err): entries it took may not be on the disk, and after a failed
// fsync later ones may report success without being there, so the node
// must neither acknowledge, vote nor serve as if they were. Every request
// is refused with ErrRaftLogFailed from now on, and raft is shut down (it
// would panic on the next term it failed to store). It does not block:
// the raft log calls it under its lock, from raft's own goroutine.
func (r *Replica) LogFailed(err error) {
	werr := fmt.Errorf("%w: %w", ErrRaftLogFailed, err)
	r.fsm.failed.CompareAndSwap(nil, &werr)
	r.logger.Error("the raft log failed a write; stopped raft, refusing every request until the node is restarted", "error", err)
	// Shutdown only signals raft's goroutines here; Replica.Shutdown waits
	// for them.
	r.raft.Shutdown()
}

// goLoop runs f in the background until Shutdown, which waits for it.
func (r *Replica) goLoop(f func()) {
	r.loops.Add(1)
	go func() {
		defer r.loops.Done()
		f()
	}()
}

// Header describes this node at revision rev, for responses.
func (r *Replica) Header(rev uint64) *kvstorev1.ResponseHeader {
	return &kvstorev1.ResponseHeader{Revision: int64(rev), RaftTerm: r.raft.CurrentTerm(), NodeId: r.id, ClusterId: r.clusterID(), Group: uint64(r.fsm.group)}
}

// ProposeClusterID names a cluster made before cluster ids: it replicates
// id through the log, and every member takes the first such entry it
// applies (Config.OnClusterID). Only the leader proposes; it should do so
// once it has applied the entries of earlier terms (raft's Barrier), so
// that it knows whether an earlier leader named the cluster already.
func (r *Replica) ProposeClusterID(ctx context.Context, id string) error {
	_, _, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_SetClusterId{SetClusterId: &raftcmdv1.SetClusterID{ClusterId: id}}})
	return err
}

// notLeader describes who the leader is, for the caller to retry there.
func (r *Replica) notLeader() error {
	addr, id := r.raft.LeaderWithID()
	if addr == "" {
		return fmt.Errorf("%w: no leader is known", ErrNotLeader)
	}
	return fmt.Errorf("%w: the leader is %s at %s", ErrNotLeader, id, addr)
}

// propose replicates cmd and returns its result once applied here.
func (r *Replica) propose(ctx context.Context, cmd *raftcmdv1.Command) (proto.Message, uint64, error) {
	if err := r.fsm.serving(); err != nil {
		return nil, 0, err
	}
	if r.raft.State() != raft.Leader {
		return nil, 0, r.notLeader()
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, 0, fmt.Errorf("encode command: %w", err)
	}
	if err := r.admit(kindOf(cmd)); err != nil {
		return nil, 0, err
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, 0, context.DeadlineExceeded
		}
	}
	r.proposals.pending.Add(1)
	defer r.proposals.pending.Add(-1)
	msg, idx, err := r.apply(ctx, data, timeout)
	if err != nil {
		r.proposals.failed.Add(1)
	}
	return msg, idx, err
}

// apply hands data to raft and waits for its result.
func (r *Replica) apply(ctx context.Context, data []byte, timeout time.Duration) (proto.Message, uint64, error) {
	f := r.raft.Apply(data, timeout)
	// raft's future cannot be cancelled; stop waiting at the deadline. The
	// entry may still commit: like any timeout, the outcome is unknown.
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	if err != nil {
		if ferr := r.fsm.Err(); ferr != nil {
			// The raft log or the state failed: say so, rather than what
			// raft made of it.
			return nil, 0, ferr
		}
		return nil, 0, leaderErr(err)
	}
	res, ok := f.Response().(*applyResult)
	if !ok || res == nil {
		return nil, 0, fmt.Errorf("entry %d: no result from the state machine", f.Index())
	}
	if res.err != nil {
		return nil, 0, res.err
	}
	return res.resp, f.Index(), nil
}

// admit refuses, before anything is proposed, a write of kind k that an
// alarm or the leader's own disk forbids: writes that add
// data from the soft margin on, others from the hard one (the raft log
// would refuse the append there anyway, and the leader step down).
func (r *Replica) admit(k writeKind) error {
	if err := refusedByAlarm(r.alarms.get(), k); err != nil {
		return err
	}
	switch k {
	case writeNone:
		// Alarms must get through; the raft log refuses them below the
		// hard margin all the same, and the leader then steps down for
		// one with room.
		return nil
	case writeAdds:
		// A write that crosses the soft margin is admitted while the node
		// is above it: the headroom below the margin takes it, and the
		// raft log refuses an append that would cross the hard one.
		return r.disk.Allow(diskspace.Low, 0)
	}
	return r.disk.Allow(diskspace.Critical, 0)
}

// noop commits an empty command and waits until this node applied it.
func (r *Replica) noop(timeout time.Duration) error {
	f := r.raft.Apply(nil, timeout)
	if err := f.Error(); err != nil {
		return err
	}
	if res, ok := f.Response().(*applyResult); ok && res.err != nil {
		return res.err
	}
	return nil
}

// Put writes one key.
func (r *Replica) Put(ctx context.Context, req *kvstorev1.PutRequest) (*kvstorev1.PutResponse, error) {
	resp, idx, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_Put{Put: req}})
	if err != nil {
		return nil, err
	}
	out := resp.(*kvstorev1.PutResponse)
	out.Header = r.Header(idx)
	return out, nil
}

// Delete removes a key, a range or a prefix.
func (r *Replica) Delete(ctx context.Context, req *kvstorev1.DeleteRequest) (*kvstorev1.DeleteResponse, error) {
	resp, idx, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_Delete{Delete: req}})
	if err != nil {
		return nil, err
	}
	out := resp.(*kvstorev1.DeleteResponse)
	out.Header = r.Header(idx)
	return out, nil
}

// Txn runs a transaction in one revision.
func (r *Replica) Txn(ctx context.Context, req *kvstorev1.TxnRequest) (*kvstorev1.TxnResponse, error) {
	resp, idx, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_Txn{Txn: req}})
	if err != nil {
		return nil, err
	}
	out := resp.(*kvstorev1.TxnResponse)
	out.Header = r.Header(idx)
	return out, nil
}

// view waits, for a linearizable read, until this node has applied every
// write acknowledged before the call; then it returns a reader at the
// requested revision (0: the latest) and the store's revision.
func (r *Replica) view(ctx context.Context, c kvstorev1.Consistency, rev int64) (revReader, uint64, error) {
	if a, ok := r.alarms.get().find(kvstorev1.AlarmType_ALARM_TYPE_CORRUPT, r.id); ok {
		return revReader{}, 0, &AlarmError{Alarm: a}
	}
	if err := r.fsm.serving(); err != nil {
		return revReader{}, 0, err
	}
	if c != kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE {
		var start time.Time
		if r.observe.ReadIndex != nil {
			start = time.Now()
		}
		idx, err := r.ri.get(ctx)
		if r.observe.ReadIndex != nil {
			r.observe.ReadIndex(time.Since(start), err)
		}
		if err == ErrNotLeader {
			// Bare: say who the leader is.
			return revReader{}, 0, r.notLeader()
		}
		if err != nil {
			return revReader{}, 0, err
		}
		if err := r.waitApplied(ctx, idx); err != nil {
			return revReader{}, 0, err
		}
	}
	cur := r.kv.AppliedIndex()
	at := cur
	if rev < 0 {
		return revReader{}, 0, fmt.Errorf("read at revision %d: %w", rev, storage.ErrFutureRevision)
	}
	if rev > 0 {
		if uint64(rev) > cur {
			return revReader{}, 0, fmt.Errorf("read at revision %d, store is at %d: %w", rev, cur, storage.ErrFutureRevision)
		}
		at = uint64(rev)
	}
	return revReader{kv: r.kv, rev: at}, cur, nil
}

// stalledPoll is how often a read waiting for entries checks whether
// this node's raft log still takes them.
const stalledPoll = 100 * time.Millisecond

// waitApplied waits until the state has applied idx, or fails with
// ErrCannotCatchUp while the raft log refuses the entries up to it.
func (r *Replica) waitApplied(ctx context.Context, idx uint64) error {
	applied := r.kv.WaitApplied(idx)
	var tick <-chan time.Time
	if r.logStalled != nil {
		t := time.NewTicker(stalledPoll)
		defer t.Stop()
		tick = t.C
	}
	for {
		if r.logStalled != nil && r.logStalled() && r.kv.AppliedIndex() < idx {
			return fmt.Errorf("read index %d, applied %d: %w", idx, r.kv.AppliedIndex(), ErrCannotCatchUp)
		}
		select {
		case <-applied:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick:
		}
	}
}

// Get reads one key; a missing key gives a response with no kv.
func (r *Replica) Get(ctx context.Context, req *kvstorev1.GetRequest) (*kvstorev1.GetResponse, error) {
	v, cur, err := r.view(ctx, req.GetConsistency(), req.GetRevision())
	if err != nil {
		return nil, err
	}
	if err := r.checkReadOwner(req); err != nil {
		return nil, err
	}
	resp, err := doGet(v, req)
	if err != nil {
		return nil, err
	}
	resp.Header = r.Header(cur)
	return resp, nil
}

// Range reads one page of a range.
func (r *Replica) Range(ctx context.Context, req *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error) {
	v, cur, err := r.view(ctx, req.GetConsistency(), req.GetRevision())
	if err != nil {
		return nil, err
	}
	if err := r.checkReadOwner(req); err != nil {
		return nil, err
	}
	resp, err := doRange(v, req, r.limits)
	if err != nil {
		return nil, err
	}
	resp.Header = r.Header(cur)
	return resp, nil
}

// Status describes this node.
func (r *Replica) Status(context.Context) (*kvstorev1.StatusResponse, error) {
	leaderAddr, leaderID := r.raft.LeaderWithID()
	rev := r.kv.AppliedIndex()
	var lastContact int64
	if r.raft.State() != raft.Leader {
		if lc := r.raft.LastContact(); !lc.IsZero() {
			lastContact = time.Since(lc).Milliseconds()
		}
	}
	var confIndex uint64
	if f := r.raft.GetConfiguration(); f.Error() == nil {
		confIndex = f.Index()
	}
	disk := r.disk.Status()
	rebuild, _ := r.fsm.gate.state()
	return &kvstorev1.StatusResponse{
		StateRebuilds:      r.rebuilds.Load(),
		StateRebuild:       rebuild,
		LastContactMs:      lastContact,
		ConfigurationIndex: confIndex,
		Header:             r.Header(rev),
		NodeId:             r.id,
		ClusterId:          r.clusterID(),
		Address:            string(r.trans.LocalAddr()),
		RaftState:          r.raft.State().String(),
		LeaderId:           string(leaderID),
		LeaderAddress:      string(leaderAddr),
		Term:               r.raft.CurrentTerm(),
		CommitIndex:        r.raft.CommitIndex(),
		// raft marks an entry applied when it hands it to the state
		// machine, which may finish first: report whichever is further.
		AppliedIndex:        max(r.raft.AppliedIndex(), rev),
		Revision:            int64(rev),
		Alarms:              r.alarms.get().protos(),
		DiskFreeBytes:       uint64(max(disk.Free, 0)),
		DiskMarginBytes:     disk.Soft,
		DiskHardMarginBytes: disk.Hard,
		WritesRefused:       r.writesRefused(),
	}, nil
}

// Members lists the raft configuration.
func (r *Replica) Members(context.Context) (*kvstorev1.MembersResponse, error) {
	f := r.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, leaderErr(err)
	}
	_, leaderID := r.raft.LeaderWithID()
	resp := &kvstorev1.MembersResponse{Header: r.Header(r.kv.AppliedIndex())}
	for _, s := range f.Configuration().Servers {
		m := &kvstorev1.Member{
			Id:       string(s.ID),
			Address:  string(s.Address),
			Suffrage: kvstorev1.Suffrage_SUFFRAGE_NONVOTER,
			Leader:   s.ID == leaderID,
		}
		if s.Suffrage == raft.Voter {
			m.Suffrage = kvstorev1.Suffrage_SUFFRAGE_VOTER
		}
		resp.Members = append(resp.Members, m)
	}
	return resp, nil
}

// newRaft is raft.NewRaft, with a panic (raft panics when its log misses
// an entry it expects) returned as an error.
func newRaft(rc *raft.Config, fsm raft.FSM, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore, trans raft.Transport) (r *raft.Raft, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("raft panicked: %v", p)
		}
	}()
	return raft.NewRaft(rc, fsm, logs, stable, snaps, trans)
}
