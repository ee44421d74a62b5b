package consensus

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// Retention says how much history automatic compaction keeps: the
// revisions of the last Age, or the last Revisions revisions. The zero
// value keeps everything.
type Retention struct {
	Age       time.Duration
	Revisions uint64
	// Every is how often the leader checks; 0 picks a tenth of Age
	// (between 1s and 5m), or 5m for Revisions, as etcd does.
	Every time.Duration
}

// ParseRetention reads "1h" (an age), "10000" (a number of revisions) or
// "0" (keep everything).
func ParseRetention(s string) (Retention, error) {
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		return Retention{Revisions: n}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return Retention{}, fmt.Errorf("retention %q: want a duration such as 1h or a number of revisions", s)
	}
	if d > 0 && d < time.Second {
		return Retention{}, fmt.Errorf("retention %q: at least 1s", s)
	}
	return Retention{Age: d}, nil
}

func (r Retention) String() string {
	switch {
	case r.Age > 0:
		return r.Age.String()
	case r.Revisions > 0:
		return strconv.FormatUint(r.Revisions, 10)
	}
	return "0"
}

func (r Retention) interval() time.Duration {
	switch {
	case r.Every > 0:
		return r.Every
	case r.Age > 0:
		return min(max(r.Age/10, time.Second), 5*time.Minute)
	}
	return 5 * time.Minute
}

type revSample struct {
	at  time.Time
	rev uint64
}

// runAutoCompact compacts the history beyond the retention, on the leader.
// Every node samples its applied revision over time, so a new leader knows
// at once which revision was current an Age ago.
func (r *Replica) runAutoCompact(keep Retention) {
	t := time.NewTicker(keep.interval())
	defer t.Stop()
	var samples []revSample
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		now, applied := time.Now(), r.kv.AppliedIndex()
		var target uint64
		if keep.Age > 0 {
			samples = append(samples, revSample{at: now, rev: applied})
			// The newest sample at least Age old is the target; older ones
			// are no longer needed.
			i := 0
			for i+1 < len(samples) && now.Sub(samples[i+1].at) >= keep.Age {
				i++
			}
			samples = samples[i:]
			if now.Sub(samples[0].at) >= keep.Age {
				target = samples[0].rev
			}
		} else if applied > keep.Revisions {
			target = applied - keep.Revisions
		}
		if target <= r.kv.CompactedRevision() || r.raft.State() != raft.Leader {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, _, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_AutoCompact{
			AutoCompact: &kvstorev1.CompactRequest{Revision: int64(target)},
		}})
		cancel()
		if err != nil {
			r.logger.Warn("automatic compaction", "revision", target, "error", err)
			continue
		}
		r.logger.Info("automatic compaction", "revision", target, "retention", keep.String())
	}
}
