package consensus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage/diskspace"
)

// Alarm lists the raised alarms (as this node has applied them), or
// raises or clears alarms through raft; changes need the leader.
func (r *Replica) Alarm(ctx context.Context, req *kvstorev1.AlarmRequest) (*kvstorev1.AlarmResponse, error) {
	switch req.GetAction() {
	case kvstorev1.AlarmAction_ALARM_ACTION_UNSPECIFIED, kvstorev1.AlarmAction_ALARM_ACTION_LIST:
		return &kvstorev1.AlarmResponse{Header: r.Header(r.kv.AppliedIndex()), Alarms: r.alarms.get().protos()}, nil
	case kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE:
		if err := r.mayDisarm(req); err != nil {
			return nil, err
		}
	}
	resp, idx, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_Alarm{Alarm: req}})
	if err != nil {
		return nil, err
	}
	out := resp.(*kvstorev1.AlarmResponse)
	out.Header = r.Header(idx)
	return out, nil
}

// changeAlarm raises or clears an alarm: through raft on the leader, by
// asking the leader elsewhere.
func (r *Replica) changeAlarm(ctx context.Context, req *kvstorev1.AlarmRequest) error {
	if r.raft.State() == raft.Leader {
		_, err := r.Alarm(ctx, req)
		return err
	}
	addr, _ := r.raft.LeaderWithID()
	if addr == "" || r.leaderAlarm == nil {
		return r.notLeader()
	}
	return r.leaderAlarm(ctx, string(addr), req)
}

// spaceAlarmTick is how often a node compares its disk with its NOSPACE
// alarm besides when either changes.
const spaceAlarmTick = time.Second

// runSpaceAlarm keeps this node's NOSPACE alarm in step with its disk: raised
// while the guard says the disk is short (below the soft margin), cleared
// once it says it is not (above it by the hysteresis). It compares what
// is with what should be, rather than acting on changes, so an alarm
// cleared by hand while the disk is still short comes back, and a change
// that failed (no leader) is made on a later tick.
func (r *Replica) runSpaceAlarm() {
	t := time.NewTicker(spaceAlarmTick)
	defer t.Stop()
	var lastErr, lastTransfer time.Time
	for {
		diskChanged := r.disk.Changed()
		set, alarmsChanged := r.alarms.watch()
		st := r.disk.Status()
		cur, raised := set.find(kvstorev1.AlarmType_ALARM_TYPE_NOSPACE, r.id)
		short, reason := r.noSpace(st)
		var req *kvstorev1.AlarmRequest
		switch {
		case short && (!raised || isQuotaReason(cur.Reason) != isQuotaReason(reason)):
			// Raised, or raised again for the other cause.
			req = &kvstorev1.AlarmRequest{
				Action: kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE, MemberId: r.id,
				Alarm: kvstorev1.AlarmType_ALARM_TYPE_NOSPACE, Reason: reason,
			}
		case !short && raised && !isQuotaReason(cur.Reason):
			// A full disk's alarm clears itself; a quota's waits for an
			// operator's disarm, as etcd's does.
			req = &kvstorev1.AlarmRequest{
				Action: kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE, MemberId: r.id,
				Alarm: kvstorev1.AlarmType_ALARM_TYPE_NOSPACE,
			}
		}
		if st.Level == diskspace.Critical && r.raft.State() == raft.Leader && time.Since(lastTransfer) > 5*time.Second {
			// A leader that cannot append refuses every write, and keeps
			// leading as long as its heartbeats go out: hand over to a
			// voter that has room.
			lastTransfer = time.Now()
			if err := r.raft.LeadershipTransfer().Error(); err != nil {
				r.logger.Warn("below the hard disk margin as the leader; cannot hand leadership over", "error", err)
			} else {
				r.logger.Warn("below the hard disk margin as the leader: handed leadership over", "reason", st.Reason())
			}
		}
		if leader, _ := r.raft.LeaderWithID(); leader == "" {
			req = nil // nobody to ask: the next tick or change tries again
		}
		if req != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := r.changeAlarm(ctx, req)
			cancel()
			switch {
			case err == nil && req.Action == kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE:
				r.logger.Warn("raised the NOSPACE alarm: the cluster refuses writes that add data", "reason", req.Reason)
			case err == nil:
				r.logger.Info("cleared the NOSPACE alarm: free space is back above the margin", "free_mib", st.Free/diskspace.MiB)
			case errors.Is(err, ErrOverQuota):
				// Cleared by hand while still over: raised again next.
			case time.Since(lastErr) > 10*time.Second && !errors.Is(err, ErrShutdown):
				lastErr = time.Now()
				r.logger.Warn("cannot change the NOSPACE alarm yet; trying again", "action", req.Action.String(), "error", err)
			}
		}
		select {
		case <-r.stop:
			return
		case <-t.C:
		case <-diskChanged:
		case <-alarmsChanged:
		}
	}
}

// noSpace tells whether this node should have its NOSPACE alarm raised,
// and why: while its key-value state is over its quota (quota.go), or its
// disk is short (the guard's level, with its hysteresis).
func (r *Replica) noSpace(st diskspace.Status) (bool, string) {
	if over, reason := r.overQuota(); over {
		return true, reason
	}
	if st.Level != diskspace.OK {
		return true, st.Reason()
	}
	return false, ""
}

// StartupNotice logs, once, why a node that starts refuses writes.
func (r *Replica) StartupNotice() {
	if why := r.writesRefused(); why != "" {
		r.logger.Warn(fmt.Sprintf("refusing writes: %s", why))
	}
}
