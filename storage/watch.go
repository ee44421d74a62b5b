package storage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// ErrWatcherBehind cancels a watcher whose reader fell too far behind.
var ErrWatcherBehind = errors.New("watcher fell too far behind")

// WatchSpec chooses what a watcher reports.
type WatchSpec struct {
	// Key and End are a range as in Range: End empty for the single key,
	// "\x00" for every key from Key on.
	Key, End []byte
	// StartRev is the first revision reported; 0 means the next one.
	StartRev uint64
	// PrevKV fills Event.Prev.
	PrevKV bool
	// MaxPending bounds the events held for a reader that is not keeping
	// up; past it the watcher is cancelled with ErrWatcherBehind. 0 means
	// DefaultMaxPending.
	MaxPending int
	// Wake, if set, is called whenever Next may have something new, so
	// that one goroutine can serve many watchers (the etcd face's watch
	// streams) instead of one blocked in Next each. It runs under the
	// hub's lock: it must not block nor call into the watcher.
	Wake func()
}

// DefaultMaxPending is the default bound on a watcher's undelivered events.
const DefaultMaxPending = 10000

// maxPendingBytes bounds the keys and values a watcher's undelivered events
// hold on to: 10,000 events of 1 MiB values would otherwise pin 10 GiB.
const maxPendingBytes = 64 << 20

// maxEventsPerNext bounds one Next call (whole revisions are never split).
const maxEventsPerNext = 1000

// hub hands every applied change to the watchers whose range holds it. A
// watcher is either synced (it gets live events pushed into its queue) or
// catching up (it reads the revision index until it reaches the last
// revision published, then turns synced under the hub's lock, so no
// revision is missed or seen twice).
type hub struct {
	kv *KV
	mu sync.Mutex
	// published is the last revision handed to watchers: everything at or
	// below it is in the store.
	published uint64
	// single holds the watchers of one key, by key; ranged the others.
	single map[string]map[*Watcher]struct{}
	ranged map[*Watcher]struct{}
	// cut counts watchers cancelled for falling behind.
	cut atomic.Uint64
}

func (h *hub) init(kv *KV) {
	h.kv = kv
	h.single = make(map[string]map[*Watcher]struct{})
	h.ranged = make(map[*Watcher]struct{})
}

// Watcher delivers the changes a WatchSpec asks for, in revision order.
type Watcher struct {
	h      *hub
	r      keyRange
	prev   bool
	minRev uint64
	max    int

	notify chan struct{} // one pending wake-up
	wake   func()        // WatchSpec.Wake
	// ctx ends when the watcher is cancelled or closed; a context rather
	// than a channel so that callers can hook it without a goroutine
	// (context.AfterFunc), which matters at tens of thousands of watchers.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	next   uint64 // first revision not yet returned by Next
	synced bool
	queue  []Event
	// queued is the size of the keys and values in queue.
	queued int
	err    error
}

// Watch starts a watcher. A StartRev below the compacted revision fails
// with ErrCompacted.
func (s *KV) Watch(spec WatchSpec) (*Watcher, error) {
	w := &Watcher{
		h:      &s.hub,
		r:      keyRange{start: spec.Key, end: spec.End},
		prev:   spec.PrevKV,
		max:    spec.MaxPending,
		notify: make(chan struct{}, 1),
		wake:   spec.Wake,
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	if w.max <= 0 {
		w.max = DefaultMaxPending
	}
	h := &s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if spec.StartRev == 0 {
		w.next, w.synced = h.published+1, true
	} else {
		if c := s.compacted.Load(); spec.StartRev < c {
			return nil, compactedErr(spec.StartRev, c)
		}
		w.next = spec.StartRev
	}
	w.minRev = w.next
	if len(w.r.end) == 0 {
		set := h.single[string(w.r.start)]
		if set == nil {
			set = make(map[*Watcher]struct{})
			h.single[string(w.r.start)] = set
		}
		set[w] = struct{}{}
	} else {
		h.ranged[w] = struct{}{}
	}
	return w, nil
}

// StartedAt is the revision the watcher had seen everything up to when it
// was created: the one before its first.
func (w *Watcher) StartedAt() uint64 { return w.minRev - 1 }

// Done is closed once the watcher is cancelled or closed.
func (w *Watcher) Done() <-chan struct{} { return w.ctx.Done() }

// Context ends once the watcher is cancelled or closed.
func (w *Watcher) Context() context.Context { return w.ctx }

// Close stops the watcher.
func (w *Watcher) Close() {
	w.h.mu.Lock()
	w.h.remove(w)
	w.h.mu.Unlock()
	w.cancel()
}

// Err is why the watcher was cancelled, or nil.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (h *hub) remove(w *Watcher) {
	if len(w.r.end) == 0 {
		if set := h.single[string(w.r.start)]; set != nil {
			delete(set, w)
			if len(set) == 0 {
				delete(h.single, string(w.r.start))
			}
		}
		return
	}
	delete(h.ranged, w)
}

// cancelAll ends every watcher with err.
func (h *hub) cancelAll(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var all []*Watcher
	for _, set := range h.single {
		for w := range set {
			all = append(all, w)
		}
	}
	for w := range h.ranged {
		all = append(all, w)
	}
	for _, w := range all {
		w.mu.Lock()
		h.cancel(w, err)
		w.mu.Unlock()
	}
}

// cancel ends w with err; the caller holds h.mu and w.mu.
func (h *hub) cancel(w *Watcher, err error) {
	w.err = err
	w.queue, w.queued = nil, 0
	h.remove(w)
	w.cancel()
	if w.wake != nil {
		w.wake()
	}
}

// Progress returns the revision the watcher has seen everything up to,
// when it has nothing pending; ok is false otherwise.
func (w *Watcher) Progress() (rev uint64, ok bool) {
	w.h.mu.Lock()
	defer w.h.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.synced || len(w.queue) > 0 || w.err != nil {
		return 0, false
	}
	return max(w.h.published, w.next-1), true
}

// Next returns the events of one or more whole revisions, and the last
// revision they cover. It waits until there are some, the watcher is
// cancelled (its error) or ctx ends (ctx's error).
func (w *Watcher) Next(ctx context.Context) ([]Event, uint64, error) {
	for {
		w.mu.Lock()
		if w.err != nil {
			err := w.err
			w.mu.Unlock()
			return nil, 0, err
		}
		if !w.synced {
			next := w.next
			w.mu.Unlock()
			evs, covered, err := w.catchUp(next)
			if err != nil || len(evs) > 0 {
				return evs, covered, err
			}
			continue
		}
		if len(w.queue) > 0 {
			evs := w.take()
			w.mu.Unlock()
			if err := w.fill(evs); err != nil {
				return nil, 0, err
			}
			return evs, evs[len(evs)-1].Revision(), nil
		}
		w.mu.Unlock()
		select {
		case <-w.notify:
		case <-w.ctx.Done():
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// take removes whole revisions from the queue, up to maxEventsPerNext
// events and maxBytesPerNext bytes unless the first revision alone is
// larger; w.mu is held.
func (w *Watcher) take() []Event {
	n, size := 0, 0
	for n < len(w.queue) {
		rev := w.queue[n].Revision()
		end, more := n, 0
		for end < len(w.queue) && w.queue[end].Revision() == rev {
			more += evSize(&w.queue[end])
			end++
		}
		if n > 0 && (end > maxEventsPerNext || size+more > maxBytesPerNext) {
			break
		}
		n, size = end, size+more
	}
	evs := w.queue[:n:n]
	w.queue = w.queue[n:]
	for i := range evs {
		w.queued -= evSize(&evs[i])
	}
	if len(w.queue) == 0 {
		w.queue = nil
	}
	w.next = evs[n-1].Revision() + 1
	return evs
}

// catchUp reads history from next on. Once it has read everything
// published, it turns the watcher synced.
func (w *Watcher) catchUp(next uint64) ([]Event, uint64, error) {
	h := w.h
	h.mu.Lock()
	target := h.published
	h.mu.Unlock()
	evs, covered, err := h.kv.history(next, target, w.r, maxEventsPerNext)
	if err != nil {
		h.mu.Lock()
		w.mu.Lock()
		h.cancel(w, err)
		w.mu.Unlock()
		h.mu.Unlock()
		return nil, 0, err
	}
	covered = max(covered, next-1)
	h.mu.Lock()
	w.mu.Lock()
	err = w.err
	if err == nil {
		w.next = covered + 1
		// Caught up: what is returned now ends at the last revision
		// published, and every later one will be pushed.
		if h.published <= covered {
			w.synced = true
		}
	}
	w.mu.Unlock()
	h.mu.Unlock()
	if err != nil || len(evs) == 0 {
		return nil, 0, err
	}
	// Outside the locks: filling reads the store, and a restore holds the
	// store's lock while it takes the hub's.
	if err := w.fill(evs); err != nil {
		return nil, 0, err
	}
	return evs, covered, nil
}

func (w *Watcher) fill(evs []Event) error {
	if !w.prev {
		return nil
	}
	if err := w.h.kv.fillPrev(evs); err != nil {
		return fmt.Errorf("watch: previous values: %w", err)
	}
	return nil
}

// publish hands the events of a committed batch, which ends at revision
// last, to the synced watchers.
func (h *hub) publish(events []Event, last uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.published = last
	if len(h.single) == 0 && len(h.ranged) == 0 {
		return
	}
	touched := make(map[*Watcher]struct{})
	for i := range events {
		ev := &events[i]
		for w := range h.single[string(ev.KV.Key)] {
			w.offer(ev, touched)
		}
		for w := range h.ranged {
			if w.r.contains(ev.KV.Key) {
				w.offer(ev, touched)
			}
		}
	}
	for w := range touched {
		w.mu.Lock()
		if w.err == nil && (len(w.queue) > w.max || w.queued > maxPendingBytes) {
			h.cut.Add(1)
			h.cancel(w, fmt.Errorf("%w: %d events (%d bytes) pending, over the limit of %d events or %d bytes; resume from revision %d",
				ErrWatcherBehind, len(w.queue), w.queued, w.max, maxPendingBytes, w.next))
		}
		w.mu.Unlock()
		w.signal()
	}
}

// signal wakes whoever waits on w.
func (w *Watcher) signal() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
	if w.wake != nil {
		w.wake()
	}
}

func (w *Watcher) offer(ev *Event, touched map[*Watcher]struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.synced || w.err != nil || ev.Revision() < w.minRev {
		return
	}
	w.queue = append(w.queue, *ev)
	w.queued += evSize(ev)
	touched[w] = struct{}{}
}

// evSize is what an event pins: its key and value.
func evSize(ev *Event) int { return len(ev.KV.Key) + len(ev.KV.Value) }

// restored turns every watcher back to catching up: the snapshot just
// loaded holds revisions they were never handed.
func (h *hub) restored(applied uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.published = applied
	reset := func(w *Watcher) {
		w.mu.Lock()
		w.synced, w.queue, w.queued = false, nil, 0
		w.mu.Unlock()
		w.signal()
	}
	for _, set := range h.single {
		for w := range set {
			reset(w)
		}
	}
	for w := range h.ranged {
		reset(w)
	}
}
