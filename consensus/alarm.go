package consensus

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
	"github.com/kvstore/kvstore/storage/diskspace"
)

// Alarms, as etcd has them: trouble on one member that the whole cluster
// acts on. An alarm is raised and cleared through raft, so every node
// applies it at the same index and refuses the same writes after it; it
// lives in the state store (storage.Alarm), so it survives restarts and
// travels in snapshots.
//
//   - NOSPACE: a member whose disk is short of space (diskspace) raises it
//     for itself, and clears it once space came back (the guard's
//     hysteresis). While any is raised, puts, transactions that put and
//     lease grants are refused, at proposal and again at apply (so a write
//     proposed before the alarm and applied after it is refused alike on
//     every node, and nothing half-applies); reads, deletes and compaction
//     go on.
//   - CORRUPT: the leader's consistency check found a member whose state
//     hashes differently from the majority's. While any is raised, client
//     writes are refused (housekeeping, lease expiry and automatic
//     compaction, goes on), and the member named refuses reads and reports
//     itself not ready.
//
// Clearing by hand (kvctl alarm disarm) is allowed but for a NOSPACE
// alarm of the leader's own while its state is over its space quota
// (quota.go); a member whose disk is still short, or whose state is
// over its quota, raises its NOSPACE alarm again.

var (
	// ErrCorrupt refuses a write while a CORRUPT alarm is raised, and a
	// read on the member it names; it means DATA_LOSS.
	ErrCorrupt = errors.New("corrupt cluster")
	// ErrNoSpace is diskspace.ErrNoSpace: every refusal for lack of space
	// matches it.
	ErrNoSpace = diskspace.ErrNoSpace
)

// AlarmError refuses a request because of a raised alarm; it matches
// ErrNoSpace (NOSPACE) or ErrCorrupt (CORRUPT).
type AlarmError struct{ Alarm storage.Alarm }

func (e *AlarmError) Error() string {
	a := e.Alarm
	switch kvstorev1.AlarmType(a.Type) {
	case kvstorev1.AlarmType_ALARM_TYPE_NOSPACE:
		if isQuotaReason(a.Reason) {
			return fmt.Sprintf("%s (NOSPACE alarm of member %s: writes that add data are refused until it is disarmed)", a.Reason, a.Member)
		}
		return fmt.Sprintf("%s (NOSPACE alarm of member %s: writes that add data are refused until it clears)", reasonOr(a, "no space"), a.Member)
	case kvstorev1.AlarmType_ALARM_TYPE_CORRUPT:
		return fmt.Sprintf("%s: %s (CORRUPT alarm of member %s: writes are refused until `kvctl alarm disarm`)", ErrCorrupt, reasonOr(a, "its state disagrees with the majority's"), a.Member)
	}
	return fmt.Sprintf("alarm %d of member %s: %s", a.Type, a.Member, a.Reason)
}

func reasonOr(a storage.Alarm, def string) string {
	if a.Reason != "" {
		return a.Reason
	}
	return def
}

// Is matches ErrNoSpace or ErrCorrupt by the alarm's type.
func (e *AlarmError) Is(target error) bool {
	switch kvstorev1.AlarmType(e.Alarm.Type) {
	case kvstorev1.AlarmType_ALARM_TYPE_NOSPACE:
		return target == ErrNoSpace
	case kvstorev1.AlarmType_ALARM_TYPE_CORRUPT:
		return target == ErrCorrupt
	}
	return false
}

// alarmSet is the raised alarms, sorted by type then member; never
// changed once published (copy on write).
type alarmSet []storage.Alarm

func (s alarmSet) find(typ kvstorev1.AlarmType, member string) (storage.Alarm, bool) {
	for _, a := range s {
		if a.Type == int32(typ) && (member == "" || a.Member == member) {
			return a, true
		}
	}
	return storage.Alarm{}, false
}

func (s alarmSet) with(a storage.Alarm) alarmSet {
	out := make(alarmSet, 0, len(s)+1)
	for _, b := range s {
		if b.Type != a.Type || b.Member != a.Member {
			out = append(out, b)
		}
	}
	out = append(out, a)
	slices.SortFunc(out, func(x, y storage.Alarm) int {
		return cmp.Or(cmp.Compare(x.Type, y.Type), cmp.Compare(x.Member, y.Member))
	})
	return out
}

// matching splits s into the alarms a DEACTIVATE of typ and member clears
// (unspecified and empty match any) and those it keeps.
func (s alarmSet) matching(typ kvstorev1.AlarmType, member string) (hit, kept alarmSet) {
	for _, a := range s {
		if (typ == kvstorev1.AlarmType_ALARM_TYPE_UNSPECIFIED || a.Type == int32(typ)) && (member == "" || a.Member == member) {
			hit = append(hit, a)
		} else {
			kept = append(kept, a)
		}
	}
	return hit, kept
}

func (s alarmSet) protos() []*kvstorev1.AlarmMember {
	out := make([]*kvstorev1.AlarmMember, 0, len(s))
	for _, a := range s {
		out = append(out, &kvstorev1.AlarmMember{MemberId: a.Member, Alarm: kvstorev1.AlarmType(a.Type), Reason: a.Reason})
	}
	return out
}

// alarms holds the published set and tells watchers of changes.
type alarms struct {
	mu      sync.Mutex
	set     alarmSet
	changed chan struct{}
}

func newAlarms() *alarms { return &alarms{changed: make(chan struct{})} }

func (a *alarms) get() alarmSet {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.set
}

// watch returns the set and a channel closed when it next changes.
func (a *alarms) watch() (alarmSet, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.set, a.changed
}

func (a *alarms) publish(s alarmSet) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if slices.Equal(a.set, s) {
		return
	}
	a.set = s
	close(a.changed)
	a.changed = make(chan struct{})
}

// writeKind is what a command does to the disk, for the refusals.
type writeKind int

const (
	// writeNone writes nothing a user sees: a no-op, an alarm.
	writeNone writeKind = iota
	// writeAdds adds data: a put, a transaction that puts, a lease grant.
	writeAdds
	// writeFrees removes data or history: a delete, a transaction that
	// only deletes or reads, a compaction.
	writeFrees
	// writeHousekeeping is the leader's own upkeep: lease expiry (a
	// revoke) and automatic compaction.
	writeHousekeeping
)

func kindOf(cmd *raftcmdv1.Command) writeKind {
	switch c := cmd.GetCommand().(type) {
	case *raftcmdv1.Command_Put, *raftcmdv1.Command_LeaseGrant:
		return writeAdds
	case *raftcmdv1.Command_Txn:
		if txnPuts(c.Txn) {
			return writeAdds
		}
		return writeFrees
	case *raftcmdv1.Command_Delete, *raftcmdv1.Command_Compact:
		return writeFrees
	case *raftcmdv1.Command_LeaseRevoke, *raftcmdv1.Command_AutoCompact:
		return writeHousekeeping
	}
	return writeNone
}

// txnPuts tells whether a txn, nested ones included, may put.
func txnPuts(t *kvstorev1.TxnRequest) bool {
	for _, ops := range [][]*kvstorev1.RequestOp{t.GetSuccess(), t.GetFailure()} {
		for _, op := range ops {
			if op.GetPut() != nil || (op.GetTxn() != nil && txnPuts(op.GetTxn())) {
				return true
			}
		}
	}
	return false
}

// refusedByAlarm returns the alarm error that refuses a command of kind k
// under set, or nil.
func refusedByAlarm(set alarmSet, k writeKind) error {
	if k == writeNone || k == writeHousekeeping {
		return nil
	}
	if a, ok := set.find(kvstorev1.AlarmType_ALARM_TYPE_CORRUPT, ""); ok {
		return &AlarmError{Alarm: a}
	}
	if k == writeAdds {
		if a, ok := set.find(kvstorev1.AlarmType_ALARM_TYPE_NOSPACE, ""); ok {
			return &AlarmError{Alarm: a}
		}
	}
	return nil
}

// doAlarm applies an ACTIVATE or DEACTIVATE to the batch and returns the
// new set.
func doAlarm(b *storage.Batch, req *kvstorev1.AlarmRequest, set alarmSet) (*kvstorev1.AlarmResponse, alarmSet, error) {
	switch req.GetAction() {
	case kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE:
		if req.GetMemberId() == "" || req.GetAlarm() == kvstorev1.AlarmType_ALARM_TYPE_UNSPECIFIED {
			return nil, set, rejected{errors.New("alarm: activating needs a member and an alarm type")}
		}
		a := storage.Alarm{Type: int32(req.GetAlarm()), Member: req.GetMemberId(), Reason: req.GetReason()}
		if err := b.SetAlarm(a); err != nil {
			return nil, set, err
		}
		set = set.with(a)
	case kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE:
		hit, kept := set.matching(req.GetAlarm(), req.GetMemberId())
		for _, a := range hit {
			if err := b.ClearAlarm(a.Type, a.Member); err != nil {
				return nil, set, err
			}
		}
		set = kept
	default:
		return nil, set, rejected{fmt.Errorf("alarm: action %v is not a change", req.GetAction())}
	}
	return &kvstorev1.AlarmResponse{Alarms: set.protos()}, set, nil
}
