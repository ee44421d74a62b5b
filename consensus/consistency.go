package consensus

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// The consistency check, as etcd's corruption check: the leader picks a
// revision every member has or will apply (its own applied index), asks
// every member of the raft configuration for a hash of its state at that
// revision (storage.KV.Hash: a read at the revision, so later writes do
// not matter), and raises a CORRUPT alarm on each member whose hash
// differs from a majority's. A member that cannot answer (it lags past
// the deadline, or compacted past the revision) is left out of that
// round. When no hash has a majority of the members and the answers
// differ, every member that answered is named: which is right cannot be
// told.

// ConsistencyReport is the outcome of one check.
type ConsistencyReport struct {
	Revision uint64
	// Hashes are the answers, by member id.
	Hashes map[string]storage.StateHash
	// Skipped are the members that did not answer, and why.
	Skipped map[string]error
	// Corrupt are the members found to disagree, sorted.
	Corrupt []string
}

// StateHash returns the hash of this node's state at rev (0: the applied
// revision), once it has applied rev or ctx ends.
func (r *Replica) StateHash(ctx context.Context, rev uint64) (storage.StateHash, error) {
	if rev == 0 {
		rev = r.kv.AppliedIndex()
	}
	select {
	case <-r.kv.WaitApplied(rev):
	case <-ctx.Done():
		return storage.StateHash{}, fmt.Errorf("hash at revision %d: still at %d: %w", rev, r.kv.AppliedIndex(), ctx.Err())
	}
	return r.kv.Hash(rev)
}

// CheckConsistency runs one consistency check; the leader only. It raises
// a CORRUPT alarm on each member found to disagree that has none yet.
func (r *Replica) CheckConsistency(ctx context.Context) (ConsistencyReport, error) {
	if r.raft.State() != raft.Leader {
		return ConsistencyReport{}, r.notLeader()
	}
	f := r.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return ConsistencyReport{}, leaderErr(err)
	}
	rev := r.kv.AppliedIndex()
	rep := ConsistencyReport{Revision: rev, Hashes: map[string]storage.StateHash{}, Skipped: map[string]error{}}
	servers := f.Configuration().Servers
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range servers {
		id, addr := string(s.ID), string(s.Address)
		wg.Go(func() {
			var h storage.StateHash
			var err error
			switch {
			case id == r.id:
				h, err = r.StateHash(ctx, rev)
			case r.memberHash == nil:
				err = fmt.Errorf("no way to ask other members")
			default:
				h, err = r.memberHash(ctx, id, addr, rev)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				rep.Skipped[id] = err
			} else {
				rep.Hashes[id] = h
			}
		})
	}
	wg.Wait()
	corrupt, majority, ok := judge(rep.Hashes, len(servers))
	rep.Corrupt = corrupt
	for _, id := range corrupt {
		if _, raised := r.alarms.get().find(kvstorev1.AlarmType_ALARM_TYPE_CORRUPT, id); raised {
			continue
		}
		reason := fmt.Sprintf("its state at revision %d hashes to %016x, the majority's to %016x", rev, rep.Hashes[id].Hash, majority)
		if !ok {
			reason = fmt.Sprintf("the members' states at revision %d differ and no majority agrees (its hash: %016x)", rev, rep.Hashes[id].Hash)
		}
		r.logger.Error("consistency check: a member's state disagrees", "member", id, "revision", rev, "reason", reason)
		_, err := r.Alarm(ctx, &kvstorev1.AlarmRequest{
			Action: kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE, MemberId: id,
			Alarm: kvstorev1.AlarmType_ALARM_TYPE_CORRUPT, Reason: reason,
		})
		if err != nil {
			return rep, fmt.Errorf("raise the CORRUPT alarm of %s: %w", id, err)
		}
	}
	return rep, nil
}

// judge returns the members whose hash differs from the one a majority of
// the members shares, with that hash; or, when none has a majority and the
// answers differ, every member that answered, and ok false.
func judge(hashes map[string]storage.StateHash, members int) (corrupt []string, majority uint64, ok bool) {
	count := map[uint64]int{}
	for _, h := range hashes {
		count[h.Hash]++
	}
	if len(count) <= 1 {
		return nil, 0, true
	}
	for h, n := range count {
		if n > members/2 {
			majority, ok = h, true
		}
	}
	for id, h := range hashes {
		if !ok || h.Hash != majority {
			corrupt = append(corrupt, id)
		}
	}
	slices.Sort(corrupt)
	return corrupt, majority, ok
}

// runConsistencyCheck checks every interval while this node leads.
func (r *Replica) runConsistencyCheck(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		if r.raft.State() != raft.Leader {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), min(every, time.Minute))
		go func() {
			select {
			case <-r.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		start := time.Now()
		rep, err := r.CheckConsistency(ctx)
		cancel()
		switch {
		case err != nil:
			r.logger.Warn("consistency check", "error", err)
		case len(rep.Corrupt) == 0:
			r.logger.Debug("consistency check: the members agree", "revision", rep.Revision,
				"members", len(rep.Hashes), "skipped", len(rep.Skipped), "took", time.Since(start))
		}
		for id, err := range rep.Skipped {
			r.logger.Info("consistency check: a member did not answer", "member", id, "revision", rep.Revision, "error", err)
		}
	}
}
