package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// ErrLockLost is returned (wrapped) by Lock when the caller's own key under
// the lock prefix disappeared while it waited: its session's lease expired
// or was revoked.
var ErrLockLost = errors.New("lock key lost")

// Mutex is a cluster-wide lock, as etcd's concurrency.Mutex: each
// contender creates a key under the prefix, attached to its session's
// lease, and the one whose key has the lowest create revision holds the
// lock. A contender that does not hold it watches only the key just
// before its own (the one with the largest create revision below its
// own), so a release wakes one waiter, not all of them. A holder that dies
// releases the lock when its lease expires.
//
// Holding the lock is a belief, not a guarantee: a holder paused for longer
// than its TTL may still think it holds it. Writes that must only happen
// under the lock should be made in a Txn that includes IsOwner.
//
// A Mutex is for one goroutine at a time; each contender needs its own
// Session (or at least its own Mutex on its own lease).
type Mutex struct {
	s      *Session
	name   string // the prefix as given, for messages
	prefix string
	key    string
	rev    int64
}

// NewMutex returns a Mutex over prefix, held through session s. Its key is
// prefix + "/" + the lease id in hex.
func NewMutex(s *Session, prefix string) *Mutex {
	return &Mutex{s: s, name: prefix, prefix: prefix + "/", key: fmt.Sprintf("%s/%x", prefix, s.Lease()), rev: -1}
}

// Key returns the Mutex's key.
func (m *Mutex) Key() string { return m.key }

// Revision returns the create revision of the key while the lock is held
// or waited for, -1 otherwise.
func (m *Mutex) Revision() int64 { return m.rev }

// IsOwner returns the compare that holds only while this Mutex holds the
// lock: its key still exists with the create revision it had when Lock
// took it. Put it in the compares of a Txn to fence the Txn's writes.
func (m *Mutex) IsOwner() *kvstorev1.Compare {
	return &kvstorev1.Compare{
		Key:    []byte(m.key),
		Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL,
		Target: &kvstorev1.Compare_CreateRevision{CreateRevision: m.rev},
	}
}

// Lock waits until it holds the lock, ctx ends, or the session ends. When
// it returns an error it leaves no key of its own behind (it deletes its
// key, with a short deadline of its own if ctx is what ended).
func (m *Mutex) Lock(ctx context.Context) error {
	if err := m.enqueue(ctx); err != nil {
		return err
	}
	err := m.wait(ctx)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		// Whatever call was cut short, the reason is the caller's.
		err = fmt.Errorf("lock %s: %w", m.name, ctx.Err())
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if derr := m.deleteKey(cctx); derr != nil {
		err = fmt.Errorf("%w (and removing the lock key failed: %v)", err, derr)
	}
	m.rev = -1
	return err
}

// enqueue creates the Mutex's key unless it exists, and learns its create
// revision.
func (m *Mutex) enqueue(ctx context.Context) error {
	key := []byte(m.key)
	txn := &kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{{
			Key:    key,
			Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL,
			Target: &kvstorev1.Compare_CreateRevision{CreateRevision: 0},
		}},
		Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: key, Lease: m.s.Lease()}}}},
		Failure: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: key}}}},
	}
	resp, err := m.retry(ctx, func(ctx context.Context) (*kvstorev1.TxnResponse, error) {
		r, err := m.s.c.KV.Txn(ctx, connect.NewRequest(txn))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	})
	if err != nil {
		return fmt.Errorf("lock %s: create key: %w", m.name, err)
	}
	if resp.GetSucceeded() {
		m.rev = resp.GetHeader().GetRevision()
		return nil
	}
	// The key exists: an earlier attempt of this very Txn created it (its
	// answer was lost), or this session locked before without unlocking.
	kv := resp.GetResponses()[0].GetGet().GetKv()
	if kv == nil {
		return fmt.Errorf("lock %s: create key: the txn failed but found no key %q", m.name, m.key)
	}
	m.rev = kv.GetCreateRevision()
	return nil
}

// retry runs a txn whose repetition is harmless, again on CodeUnavailable:
// the Client fails writes over only when they surely never reached a node,
// but the txns of a Mutex are safe to repeat (creating the key is guarded
// by its create revision, deleting it twice deletes nothing the second
// time), and a lock should not fail because a leader election was under
// way.
func (m *Mutex) retry(ctx context.Context, f func(context.Context) (*kvstorev1.TxnResponse, error)) (*kvstorev1.TxnResponse, error) {
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		resp, err := f(ctx)
		if err == nil || connect.CodeOf(err) != connect.CodeUnavailable {
			return resp, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (after %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// wait returns once the Mutex's key is the oldest under the prefix.
func (m *Mutex) wait(ctx context.Context) error {
	// Waiting ends when the session does: the key goes with the lease.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-m.s.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	// After a wake-up the contenders are listed with a serializable read,
	// which spares a round trip to the leader (and, on a follower, the
	// wait until it learns the leader's commit index). A stale listing is
	// safe as long as it shows our own key: every key created before ours
	// that still exists existed then too, so a stale listing can only show
	// contenders that are gone since, whose deletion the watch from the
	// listing's revision on will report. Without our key, it is too stale:
	// ask again, linearizably.
	consistency := kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE
	for {
		resp, err := m.s.c.RangeAll(ctx, &kvstorev1.RangeRequest{Key: []byte(m.prefix), Prefix: true, KeysOnly: true, Consistency: consistency})
		if err != nil {
			return m.waitErr(ctx, fmt.Errorf("lock %s: list contenders: %w", m.name, err))
		}
		var mine, pred *kvstorev1.KeyValue
		for _, kv := range resp.GetKvs() {
			switch cr := kv.GetCreateRevision(); {
			case string(kv.GetKey()) == m.key:
				mine = kv
			case cr < m.rev && (pred == nil || cr > pred.GetCreateRevision()):
				pred = kv
			}
		}
		if mine == nil || mine.GetCreateRevision() != m.rev {
			if consistency == kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE {
				consistency = kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE
				continue
			}
			return fmt.Errorf("lock %s: %w: key %q is gone (session lease %x expired or revoked?)", m.name, ErrLockLost, m.key, m.s.Lease())
		}
		if pred == nil {
			return nil
		}
		if err := m.waitDeleted(ctx, pred.GetKey(), resp.GetHeader().GetRevision()+1); err != nil {
			return m.waitErr(ctx, err)
		}
		consistency = kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE
	}
}

// waitErr says why waiting stopped when the session ended rather than the
// caller's context.
func (m *Mutex) waitErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		select {
		case <-m.s.Done():
			return fmt.Errorf("lock %s: session ended while waiting: %w", m.name, m.s.Err())
		default:
		}
	}
	return err
}

// waitDeleted watches key from revision from on until it is deleted. Only
// the key itself is watched: that is what keeps a release from waking
// every waiter.
func (m *Mutex) waitDeleted(ctx context.Context, key []byte, from int64) error {
	w := m.s.c.Watch(ctx, &kvstorev1.WatchRequest{Key: key, StartRevision: from, NoPut: true})
	defer w.Close()
	for w.Receive() {
		for _, ev := range w.Msg().GetEvents() {
			if ev.GetType() == kvstorev1.EventType_EVENT_TYPE_DELETE && bytes.Equal(ev.GetKv().GetKey(), key) {
				return nil
			}
		}
	}
	var ce *CompactedError
	if errors.As(w.Err(), &ce) {
		// The revisions since the range were compacted away: look again
		// rather than wait on a watch that cannot be made.
		return nil
	}
	return fmt.Errorf("lock %s: watch %q: %w", m.name, key, w.Err())
}

// Unlock releases the lock by deleting the Mutex's key. The next waiter
// learns of it from its watch.
func (m *Mutex) Unlock(ctx context.Context) error {
	if err := m.deleteKey(ctx); err != nil {
		return fmt.Errorf("unlock %s: %w", m.name, err)
	}
	m.rev = -1
	return nil
}

// deleteKey deletes the Mutex's key, retrying like enqueue.
func (m *Mutex) deleteKey(ctx context.Context) error {
	txn := &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{{
		Request: &kvstorev1.RequestOp_Delete{Delete: &kvstorev1.DeleteRequest{Key: []byte(m.key)}},
	}}}
	_, err := m.retry(ctx, func(ctx context.Context) (*kvstorev1.TxnResponse, error) {
		r, err := m.s.c.KV.Txn(ctx, connect.NewRequest(txn))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	})
	return err
}
